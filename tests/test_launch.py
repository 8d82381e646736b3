"""The launch/ scripts, run through bash with --dry-run and, for the paths that would call cloud tools, against
fake gcloud / sbatch / srun / scontrol / tar / python executables put first on PATH (nothing real is called).

Checks: the printed commands carry the chosen variables and pass CONFIG, WORKDIR, MODE and the extra main.py flags
through verbatim (quoting included: the remote --command string and the SLURM job script are parsed back into
words); a real run calls exactly what --dry-run prints; tpu_queued.sh reruns after exit 143 or a preemption and
stops on 0, on 1 and on a bug; the SLURM job requeues itself on 143; bad usage exits 2 with a usage line.
"""
import os
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("tpu_vm.sh", "tpu_queued.sh", "gpu.sh", "slurm.sh")
HELPERS = ("common.sh", "tpu_common.sh")
CONFIG = "configs/vp/cifar10.py"
WORKDIR = "gs://bucket/runs/cifar10 vp"
# Extra main.py flags that only survive if every layer quotes them: a space, a quote, a glob, a $.
EXTRA = ["--config.training.n_iters=7", "--eval_folder=eval 2", "--config.data.data_dir=gs://b/it's",
         "--config.model.name=ncsn*", "--config.x=$HOME"]
# Variables the scripts read: cleared so the caller's environment cannot change what a test sees.
SCRIPT_VARIABLES = ("TPU_NAME", "QR_NAME", "ZONE", "ACCELERATOR_TYPE", "TPU_VERSION", "PROJECT", "CREATE_FLAGS",
                    "SKIP_CREATE", "MODE", "PIP_INSTALL", "JAX_PIP", "REMOTE_DIR", "REMOTE_PYTHON", "PROVISIONING",
                    "MAX_RETRIES", "POLL_SECONDS", "CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                    "PYTHON", "NODES", "GPUS_PER_NODE", "CPUS_PER_TASK", "TIME_LIMIT", "PARTITION", "JOB_NAME",
                    "OUTPUT", "EXTRA_SBATCH", "SIGNAL_SECONDS", "MAX_REQUEUES", "JOB_SETUP", "SLURM_JOB_ID",
                    "SLURM_RESTART_COUNT")

# Logs its argv (fields split by \x1f) to $FAKE/calls; as sbatch it saves its stdin (the job script), as
# anything but gcloud it exits $FAKE_STATUS. As gcloud it keeps a queued resource's state in
# $FAKE/state, and ends each `tpu-vm ssh ... main.py` with the next line "STATUS STATE_AFTER" of $FAKE/runs
# (STATE_AFTER "-": the resource is gone).
FAKE_TOOL = r"""#!/usr/bin/env bash
{ printf '%s\x1f' "$(basename "$0")" "$@"; printf '\n'; } >>"$FAKE/calls"
if [ "$(basename "$0")" = sbatch ]; then cat >"$FAKE/sbatch_stdin"; fi
[ "$(basename "$0")" = gcloud ] || exit "${FAKE_STATUS:-0}"
case " $* " in
  *" queued-resources describe "*)
    state=$(cat "$FAKE/state" 2>/dev/null || true)
    [ -n "$state" ] || exit 1
    echo "$state"
    if [ "$state" = PROVISIONING ]; then echo ACTIVE >"$FAKE/state"; fi ;;
  *" queued-resources create "*) echo PROVISIONING >"$FAKE/state" ;;
  *" queued-resources delete "*) : >"$FAKE/state" ;;
  *" tpu-vm describe "*) exit "$(cat "$FAKE/tpu_describe_status")" ;;
  *" tpu-vm ssh "*main.py*)
    read -r status after <"$FAKE/runs"
    sed -i 1d "$FAKE/runs"
    if [ "$after" = - ]; then : >"$FAKE/state"; else echo "$after" >"$FAKE/state"; fi
    exit "$status" ;;
esac
"""


@pytest.fixture
def fake(tmp_path):
  """A PATH directory of fake tools; returns (directory, calls()) where calls() lists the logged argvs."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "tar", "sbatch", "srun", "scontrol", "python", "python3"):
    (bin_dir / tool).write_text(FAKE_TOOL)
    (bin_dir / tool).chmod(0o755)
  (tmp_path / "tpu_describe_status").write_text("1\n")

  def calls():
    log = tmp_path / "calls"
    return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()] if log.exists() else []
  return tmp_path, calls


def run(script, *args, fake_dir, env=None, cwd=ROOT, stdin=None):
  full_env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARIABLES}
  full_env.update(PATH=f"{fake_dir / 'bin'}:{os.environ['PATH']}", FAKE=str(fake_dir), TMPDIR=str(fake_dir))
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], env=full_env, cwd=cwd, input=stdin,
                        capture_output=True, text=True, timeout=60)


def printed_commands(stdout):
  """The `+ ` lines of a dry run, each parsed back into its words."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote_main_argv(command):
  """The main.py words of a `gcloud ... ssh --command STRING` (STRING: `cd DIR && PYTHON main.py ...`)."""
  words = shlex.split(command[command.index("--command") + 1])
  return words[len(words) - words[::-1].index("&&"):]


def expected_main(mode="train", distributed=True, workdir=WORKDIR):
  return (["--config", CONFIG, "--mode", mode, "--workdir", workdir] + (["--distributed"] if distributed else [])
          + EXTRA)


@pytest.mark.parametrize("name", SCRIPTS + HELPERS)
def test_scripts_parse_and_pass_shellcheck(name):
  path = os.path.join(ROOT, "launch", name)
  result = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=30)
  assert result.returncode == 0, result.stderr
  if name in SCRIPTS:
    with open(path, encoding="utf-8") as f:
      head = f.read(4000)
    assert "set -euo pipefail" in head and "Variables (environment)" in head and "--dry-run" in head
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
  result = subprocess.run(["shellcheck", "-x", f"launch/{name}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stdout


def test_tpu_vm_dry_run_creates_copies_and_runs_on_every_worker(fake):
  fake_dir, calls = fake
  env = dict(TPU_NAME="pod", ZONE="europe-west4-a", ACCELERATOR_TYPE="v4-32", PROJECT="proj", MODE="sample",
             CREATE_FLAGS="--spot --network=n1")
  result = run("tpu_vm.sh", "--dry-run", CONFIG, WORKDIR, *EXTRA, fake_dir=fake_dir, env=env)
  assert result.returncode == 0, result.stderr
  assert calls() == []  # --dry-run runs nothing
  commands = printed_commands(result.stdout)
  create = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]]
  assert create == [["gcloud", "compute", "tpus", "tpu-vm", "create", "pod", "--zone=europe-west4-a",
                     "--project=proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot",
                     "--network=n1"]]
  on_workers = [c for c in commands if c[3:5] in (["tpu-vm", "ssh"], ["tpu-vm", "scp"])]
  assert len(on_workers) == 3 and all("--worker=all" in c and "--zone=europe-west4-a" in c for c in on_workers)
  setup, job = on_workers[1], on_workers[2]
  assert "pip install -q -e . 'jax[tpu]'" in setup[setup.index("--command") + 1]
  assert remote_main_argv(job) == ["python3", "main.py"] + expected_main(mode="sample")


def test_tpu_vm_skip_create_and_no_pip(fake):
  fake_dir, _ = fake
  result = run("tpu_vm.sh", "--dry-run", "--skip-create", CONFIG, WORKDIR, fake_dir=fake_dir,
               env=dict(PIP_INSTALL="0"))
  assert result.returncode == 0, result.stderr
  commands = printed_commands(result.stdout)
  assert not any("describe" in c or "create" in c for c in commands)
  assert not any("pip" in " ".join(c) for c in commands)


@pytest.mark.parametrize("exists", [True, False])
def test_tpu_vm_real_run_calls_what_dry_run_prints(fake, exists):
  fake_dir, calls = fake
  (fake_dir / "tpu_describe_status").write_text("0\n" if exists else "1\n")
  (fake_dir / "runs").write_text("143 ACTIVE\n")
  dry = run("tpu_vm.sh", "--dry-run", CONFIG, WORKDIR, *EXTRA, fake_dir=fake_dir)
  result = run("tpu_vm.sh", CONFIG, WORKDIR, *EXTRA, fake_dir=fake_dir)
  assert result.returncode == 143, result.stderr  # main.py's status comes back
  planned = printed_commands(dry.stdout)
  if exists:
    planned = [c for c in planned if "create" not in c]
  assert calls() == planned
  assert "Traceback" not in result.stderr and "warning" not in result.stderr


def queued(fake, runs, env=None):
  fake_dir, calls = fake
  (fake_dir / "runs").write_text("".join(f"{r}\n" for r in runs))
  result = run("tpu_queued.sh", CONFIG, WORKDIR, *EXTRA, fake_dir=fake_dir,
               env=dict(dict(POLL_SECONDS="0"), **(env or {})))
  log = calls()
  jobs = [c for c in log if c[3:5] == ["tpu-vm", "ssh"] and "main.py" in c[-1]]
  def count(verb):
    return sum(c[1:5] == ["compute", "tpus", "queued-resources", verb] for c in log)
  return result, jobs, count("create"), count("delete"), sum("scp" in c for c in log)


def test_tpu_queued_reruns_after_preemption_and_stops_on_success(fake):
  result, jobs, creates, deletes, copies = queued(fake, ["143 SUSPENDED", "0 ACTIVE"])
  assert result.returncode == 0, result.stderr
  assert len(jobs) == 2 and jobs[0] == jobs[1]  # the same command again: it resumes from the workdir
  assert remote_main_argv(jobs[0]) == ["python3", "main.py"] + expected_main()
  assert (creates, deletes, copies) == (2, 1, 2)  # the SUSPENDED resource was deleted, requested, set up again


def test_tpu_queued_stops_on_bad_input(fake):
  result, jobs, creates, _, _ = queued(fake, ["1 ACTIVE", "0 ACTIVE"])
  assert result.returncode == 1 and len(jobs) == 1 and creates == 1, result.stderr


def test_tpu_queued_reruns_143_on_a_live_resource_up_to_max_retries(fake):
  result, jobs, creates, deletes, copies = queued(fake, ["143 ACTIVE"] * 5, env=dict(MAX_RETRIES="2"))
  assert result.returncode == 143, result.stderr
  assert len(jobs) == 3 and (creates, deletes, copies) == (1, 0, 1)  # same VM: no new request, no new copy
  assert "giving up" in result.stderr


def test_tpu_queued_lost_connection_on_a_deleted_resource_is_a_preemption(fake):
  result, jobs, creates, deletes, _ = queued(fake, ["1 -", "255 SUSPENDED", "0 ACTIVE"])
  assert result.returncode == 0, result.stderr
  assert (len(jobs), creates, deletes) == (3, 3, 1)


def test_tpu_queued_stops_on_a_bug(fake):
  result, jobs, _, _, _ = queued(fake, ["139 ACTIVE", "0 ACTIVE"])
  assert result.returncode == 139 and len(jobs) == 1, result.stderr


def test_tpu_queued_retry_decision():
  script = os.path.join(ROOT, "launch", "tpu_queued.sh")
  cases = {("0", "ACTIVE"): "finish", ("0", ""): "finish", ("143", "ACTIVE"): "retry", ("143", "SUSPENDED"): "retry",
           ("1", "ACTIVE"): "stop", ("1", ""): "retry", ("255", "SUSPENDING"): "retry", ("2", "ACTIVE"): "stop"}
  lines = "; ".join(f"retry_decision {s} '{state}'" for s, state in cases)
  result = subprocess.run(["bash", "-c", f"source {shlex.quote(script)}; {lines}"], capture_output=True, text=True,
                          timeout=30)
  assert result.stdout.split() == list(cases.values()), result.stderr


@pytest.mark.parametrize("provisioning,group,flag", [("spot", [], "--spot"),
                                                     ("best-effort", ["alpha"], "--best-effort"),
                                                     ("on-demand", [], None)])
def test_tpu_queued_dry_run_tiers(fake, provisioning, group, flag):
  fake_dir, calls = fake
  env = dict(PROVISIONING=provisioning, TPU_NAME="node", QR_NAME="req", ACCELERATOR_TYPE="v5litepod-16",
             ZONE="us-west4-a")
  result = run("tpu_queued.sh", "--dry-run", CONFIG, WORKDIR, *EXTRA, fake_dir=fake_dir, env=env)
  assert result.returncode == 0, result.stderr
  assert calls() == []
  commands = printed_commands(result.stdout)
  create = [c for c in commands if "create" in c][0]
  tier = [flag] if flag else []
  assert create == (["gcloud"] + group + ["compute", "tpus", "queued-resources", "create", "req", "--node-id=node",
                    "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
                    "--runtime-version=tpu-ubuntu2204-base"] + tier)
  job = [c for c in commands if "--command" in c][-1]
  assert remote_main_argv(job) == ["python3", "main.py"] + expected_main()


def test_gpu_dry_run_and_real_run(fake):
  fake_dir, calls = fake
  result = run("gpu.sh", "--dry-run", CONFIG, "runs/x", *EXTRA, fake_dir=fake_dir)
  assert result.returncode == 0, result.stderr
  assert calls() == []
  (command,) = printed_commands(result.stdout)  # no pip install by default, one process
  main_py = os.path.join(ROOT, "main.py")
  assert command == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "python", main_py] + expected_main(
      distributed=False, workdir="runs/x")
  env = dict(PIP_INSTALL="1", CUDA_VISIBLE_DEVICES="1,3", XLA_PYTHON_CLIENT_MEM_FRACTION=".7", FAKE_STATUS="143")
  dry = run("gpu.sh", "--dry-run", CONFIG, "runs/x", *EXTRA, fake_dir=fake_dir, env=env)
  pip, command = printed_commands(dry.stdout)
  assert pip == ["python", "-m", "pip", "install", "-q", "-e", ROOT, "jax[cuda12]"]
  assert command[:4] == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=.7", "CUDA_VISIBLE_DEVICES=1,3", "python"]
  result = run("gpu.sh", CONFIG, "runs/x", *EXTRA, fake_dir=fake_dir, env=env)
  assert result.returncode == 143  # the first command (pip) "failed" with 143 too: it stops there
  assert calls() == [["python"] + pip[1:]]
  env["PIP_INSTALL"] = "0"
  result = run("gpu.sh", CONFIG, "runs/x", *EXTRA, fake_dir=fake_dir, env=env)
  assert result.returncode == 143 and calls()[-1] == ["python"] + command[4:]


def job_script_of(stdout):
  match = re.search(r"^\+ sbatch <<'EOF'\n(.*)\nEOF$", stdout, re.S | re.M)
  assert match, stdout
  return match.group(1)


def test_slurm_dry_run_writes_the_job(fake):
  fake_dir, calls = fake
  env = dict(NODES="3", GPUS_PER_NODE="4", TIME_LIMIT="2:00:00", PARTITION="a100", CPUS_PER_TASK="12",
             EXTRA_SBATCH="--account=acct --qos=high", MODE="eval")
  result = run("slurm.sh", "--dry-run", CONFIG, "/shared/my runs", *EXTRA, fake_dir=fake_dir, env=env)
  assert result.returncode == 0, result.stderr
  assert calls() == []
  script = job_script_of(result.stdout)
  directives = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
  for d in ("--nodes=3", "--ntasks-per-node=1", "--gpus-per-node=4", "--time=2:00:00", "--partition=a100",
            "--cpus-per-task=12", "--requeue", "--signal=TERM@300", "--account=acct", "--qos=high"):
    assert d in directives, (d, directives)
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in script.splitlines()
  (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
  words = shlex.split(srun)
  assert words[:4] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=12"]
  assert words[4:] == ["python", os.path.join(ROOT, "main.py")] + expected_main(
      mode="eval", workdir="/shared/my runs") + ["||", "status=$?"]


@pytest.mark.parametrize("srun_status,restarts,requeued", [(143, "0", True), (143, "20", False), (0, "0", False),
                                                            (1, "0", False)])
def test_slurm_job_requeues_on_143(fake, srun_status, restarts, requeued):
  fake_dir, calls = fake
  dry = run("slurm.sh", "--dry-run", CONFIG, WORKDIR, *EXTRA, fake_dir=fake_dir)
  result = run("slurm.sh", CONFIG, WORKDIR, *EXTRA, fake_dir=fake_dir)
  assert result.returncode == 0 and calls() == [["sbatch"]], result.stderr
  job = fake_dir / "sbatch_stdin"  # what sbatch was given is what --dry-run printed
  assert job.read_text() == job_script_of(dry.stdout) + "\n"
  assert subprocess.run(["bash", "-n", str(job)], timeout=30).returncode == 0
  env = dict(SLURM_JOB_ID="4242", SLURM_RESTART_COUNT=restarts, FAKE_STATUS=str(srun_status))
  full_env = dict({k: v for k, v in os.environ.items() if k not in SCRIPT_VARIABLES},
                  PATH=f"{fake_dir / 'bin'}:{os.environ['PATH']}", FAKE=str(fake_dir), **env)
  ran = subprocess.run(["bash", str(job)], env=full_env, capture_output=True, text=True, timeout=30)
  assert ran.returncode == srun_status, ran.stderr
  srun, *rest = calls()[1:]
  assert srun[:4] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "python"]
  assert srun[5:] == expected_main()
  assert rest == ([["scontrol", "requeue", "4242"]] if requeued else [])


BAD_USAGE = [
    ([], {}, "CONFIG and WORKDIR are required"),
    ([CONFIG], {}, "CONFIG and WORKDIR are required"),
    (["--bogus", CONFIG, WORKDIR], {}, "unknown option --bogus"),
    ([CONFIG, WORKDIR, "--mode=eval"], {}, "MODE="),
    ([CONFIG, WORKDIR, "--dry-run"], {}, "goes before CONFIG"),
    ([CONFIG, WORKDIR], {"MODE": "trian"}, "not a main.py mode"),
    (["configs/vp/no_such.py", WORKDIR], {}, "not found"),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args,env,message", BAD_USAGE)
def test_bad_usage_exits_2_with_a_usage_line(fake, script, args, env, message):
  fake_dir, calls = fake
  result = run(script, *args, fake_dir=fake_dir, env=env)
  assert result.returncode == 2, (result.returncode, result.stderr)
  assert message in result.stderr and "usage: " in result.stderr and "Traceback" not in result.stderr
  assert result.stdout == "" and calls() == []


@pytest.mark.parametrize("script,env,message", [
    ("tpu_queued.sh", {"PROVISIONING": "spotty"}, "PROVISIONING=spotty"),
    ("tpu_queued.sh", {"MAX_RETRIES": "many"}, "MAX_RETRIES=many"),
    ("tpu_vm.sh", {"PIP_INSTALL": "yes"}, "PIP_INSTALL=yes"),
    ("slurm.sh", {"NODES": "0"}, "at least 1"),
    ("slurm.sh", {"PARTITION": "a b"}, "must not contain spaces"),
])
def test_bad_variables_exit_2(fake, script, env, message):
  fake_dir, _ = fake
  result = run(script, "--dry-run", CONFIG, WORKDIR, fake_dir=fake_dir, env=env)
  assert result.returncode == 2 and message in result.stderr and "usage: " in result.stderr, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_variables(fake, script):
  fake_dir, _ = fake
  result = run(script, "--help", fake_dir=fake_dir)
  assert result.returncode == 0 and result.stdout.startswith("usage: ") and "Variables (environment)" in result.stdout
  assert "MODE" in result.stdout and "set -euo" not in result.stdout
