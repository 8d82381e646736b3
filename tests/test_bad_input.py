"""Bad input on the command line gets one line on stderr (`error: ...`) and exit status 1, never a traceback,
and nothing is written; each case runs `main.py` as a user would."""
import errno
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def assert_one_line(result, pattern):
  import re  # pylint: disable=import-outside-toplevel
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr[-3000:]


@pytest.fixture(scope="module")
def broken_config(tmp_path_factory):
  path = tmp_path_factory.mktemp("configs") / "broken.py"
  path.write_text("def get_config(:\n")
  return str(path)


CASES = {
    "missing config file": (["--config", "configs/vp/no_such_config.py"],
                            r"^error: --config could not be loaded: OSError: .*no_such_config.py.*No such file"),
    "override of a key that does not exist": (
        ["--config", "configs/vp/digits.py", "--config.training.n_iterz=5"],
        r"^error: --config.training.n_iterz: the config has no key 'n_iterz'"),
    "misspelt section": (["--config", "configs/vp/digits.py", "--config.trainin.n_iters=5"],
                         r"the config has no key 'trainin' \(Did you mean \"training\""),
    "value of the wrong type": (["--config", "configs/vp/digits.py", "--config.training.n_iters=many"],
                                r"^error: flag --config.training.n_iters=many: invalid literal"),
    "--distributed with no cluster": (["--config", "configs/vp/digits.py", "--distributed"],
                                      r"^error: --distributed found no cluster to join"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_command_line_is_one_line(case, tmp_path):
  args, pattern = CASES[case]
  workdir = tmp_path / "run"
  assert_one_line(run_main(*args, "--mode", "train", "--workdir", str(workdir)), pattern)
  assert not workdir.exists()  # nothing was started


def test_broken_config_file_is_one_line(broken_config, tmp_path):
  result = run_main("--config", broken_config, "--mode", "train", "--workdir", str(tmp_path / "run"))
  assert_one_line(result, r"^error: --config could not be loaded: SyntaxError: invalid syntax \(broken.py, line 1\)")


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("keep me")
  result = run_main("--config", "configs/vp/digits.py", "--mode", "train", "--workdir", str(path))
  assert_one_line(result, r"^error: --workdir=\S+a_file is a file, not a folder")
  assert path.read_text() == "keep me"


@pytest.mark.parametrize("mode", ["eval", "sample"])
def test_eval_and_sample_on_a_file_workdir_are_one_line(mode, tmp_path):
  path = tmp_path / "a_file"
  path.write_text("keep me")
  result = run_main("--config", "configs/vp/digits.py", "--mode", mode, "--workdir", str(path))
  assert_one_line(result, r"^error: --workdir=\S+a_file is a file, not a folder")
  assert path.read_text() == "keep me"


@pytest.mark.parametrize("mode,flag", [("sample", "--config.eval.pretrained"), ("train", "--config.training.init_from")])
def test_checkpoint_path_that_does_not_exist_is_one_line(mode, flag, tmp_path):
  workdir = tmp_path / "run"
  result = run_main("--config", "configs/vp/digits.py", f"{flag}={tmp_path / 'nowhere.pth'}", "--mode", mode,
                    "--workdir", str(workdir))
  assert_one_line(result, r"^error: checkpoint \S+nowhere.pth does not exist; check the path")
  assert not workdir.exists()  # nothing was started


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_workdir_is_one_line(tmp_path):
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    result = run_main("--config", "configs/vp/digits.py", "--mode", "train", "--workdir", str(parent / "run"))
  finally:
    parent.chmod(0o755)
  assert_one_line(result, r"cannot be written .* is read-only for this user")


def test_missing_data_dir_is_one_line(tmp_path):
  result = run_main("--config", "configs/vp/digits.py", "--config.data.dataset=CIFAR10", "--config.data.num_channels=3",
                    f"--config.data.data_dir={tmp_path / 'no_data'}", "--config.training.snapshot_sampling=False",
                    "--mode", "train", "--workdir", str(tmp_path / "run"))
  assert_one_line(result, r"^error: TFDS dataset 'cifar10' is not prepared in data_dir .*no_data")
  assert not (tmp_path / "run").exists()  # refused before the workdir was touched


def test_corrupt_checkpoint_is_one_line_without_tracebacks_at_exit(tmp_path):
  """Bit flips the storage layer's own CRC catches: one line, and no asyncio teardown tracebacks after it."""
  from tests import train_utils  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  train_utils.run_train(workdir, "--config.training.n_iters=4", "--config.training.snapshot_freq=4")
  train_utils.flip_a_bit_in_each_data_file(os.path.join(workdir, "checkpoints", "4"), 0x10)
  result = run_main("--config", "configs/vp/digits.py", *train_utils.TINY, "--mode", "sample", "--workdir", workdir)
  assert_one_line(result, r"^error: checkpoint \S+checkpoints/4 (is corrupt|is unreadable|could not be restored)")
  assert not os.path.exists(os.path.join(workdir, "eval"))


def test_full_disk_and_path_errors_read_as_one_line():
  sys.path.insert(0, ROOT)
  try:
    import main  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(ROOT)
  line = main._error_line(OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints"))  # pylint: disable=protected-access
  assert line == ("error: No space left on device (/runs/x/checkpoints): free space, or use another --workdir; "
                  "what was already written is intact.")
  assert main._error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x.npz")) == (  # pylint: disable=protected-access
      "error: No such file or directory (/x.npz).")
  assert main._error_line(ValueError("eval.num_samples=0 must be >= 1.\n")) == "error: eval.num_samples=0 must be >= 1."  # pylint: disable=protected-access
