"""Every mode on 2 processes (jax.distributed on localhost, 1 device each) does what 1 process with the same 2
devices does: the same training curve, and on one checkpoint the same reference statistics, eval reports,
samples and edits, written by process 0 only."""
import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from score_sde import train
from tests import train_utils

pytestmark = pytest.mark.xdist_group("multiprocess")


def _run(train_workdir, eval_workdir, tag, processes=1, devices_each=1):
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  cluster = [[f"localhost:{port}", str(processes), str(i)] for i in range(processes)] if processes > 1 else [[]]
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_modes", train_workdir, eval_workdir, tag,
                             *args],
                            env=train_utils.env_with(devices=devices_each), cwd=train_utils.ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in cluster]
  try:
    outputs = [p.communicate(timeout=900) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  return [out for out, _ in outputs]


def _files(workdir, tag):
  """{path under the tag's folders: file} of the npz / json results one configuration wrote."""
  found = {}
  for top in (f"eval_{tag}", f"stats_{tag}"):
    for path in glob.glob(os.path.join(workdir, top, "**", "*"), recursive=True):
      if path.endswith((".npz", "report.json")):
        found[os.path.relpath(path, os.path.join(workdir, top))] = path
  return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(the workdir both evaluate, its second training run's workdir, stdout of the 1 and of the 2 processes)."""
  workdir, second = str(tmp_path_factory.mktemp("one")), str(tmp_path_factory.mktemp("two"))
  one = _run(workdir, workdir, "one", devices_each=2)[0]
  two = _run(second, workdir, "two", processes=2, devices_each=1)  # trains its own run, evaluates the first's
  return workdir, second, one, two


def test_two_processes_train_as_one(runs):
  workdir, second, _, _ = runs
  curve_1, curve_2 = train.logged_scalars(workdir, "train_loss"), train.logged_scalars(second, "train_loss")
  assert sorted(curve_1) == sorted(curve_2) == list(range(2, 21, 2))
  np.testing.assert_allclose([curve_2[s] for s in sorted(curve_2)], [curve_1[s] for s in sorted(curve_1)],
                             rtol=1e-4)
  assert len(os.listdir(os.path.join(second, "tensorboard"))) == 1  # process 0's


def test_two_processes_evaluate_sample_and_edit_as_one(runs):
  workdir = runs[0]
  one, two = _files(workdir, "one"), _files(workdir, "two")
  assert sorted(one) == sorted(two)
  kinds = {p.split(os.sep)[0] for p in one}
  assert kinds == {"ckpt_20", "samples", "edit", "digits_8_stats.npz"}, kinds
  report_one, report_two = (json.load(open(d[os.path.join("ckpt_20", "report.json")])) for d in (one, two))
  assert {"eval_loss", "bpd", "vlb_bpd", "fid", "kid", "inception_score"} <= set(report_one)
  assert sorted(report_one) == sorted(report_two)
  timings = [k for k in report_one if k.endswith("_seconds_per_image")]
  for key, value in report_one.items():
    if key in timings:
      continue
    if isinstance(value, float):
      np.testing.assert_allclose(report_two[key], value, rtol=1e-5, err_msg=key)
    else:
      assert report_two[key] == value, key
  for name, path in one.items():
    if not name.endswith(".npz"):
      continue
    a, b = np.load(path), np.load(two[name])
    assert sorted(a.files) == sorted(b.files), name
    for field in set(a.files) - set(timings):
      x, y = a[field], b[field]
      assert x.shape == y.shape and x.dtype == y.dtype, (name, field)
      if x.dtype.kind in "US":  # names
        assert np.array_equal(x, y), (name, field)
      elif x.dtype == np.uint8:  # images: a float a hair across a uint8 level moves it by one
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1 and np.mean(x != y) < 1e-3, (name, field)
      else:
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f"{name} {field}")


def test_only_process_zero_prints_and_writes(runs):
  workdir, _, _, two = runs
  ours = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for out in two]  # the library's
  assert any(line.startswith("step 20:") for line in ours[0]) and any("edit inpaint:" in line for line in ours[0])
  assert not ours[1], ours[1]
  assert not glob.glob(os.path.join(workdir, "eval_two", "**", "*.tmp"), recursive=True)
