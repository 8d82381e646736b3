"""Training end to end, as separate processes: resume after SIGKILL, SIGTERM, 1 vs 8 devices, bad states."""
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from score_sde import train
from tests import train_utils

# One xdist worker runs this whole file, so the shared run below is computed once.
pytestmark = pytest.mark.xdist_group("train")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A tiny uninterrupted 24-step run on one device (shared by several tests, which only read it)."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  train_utils.run_train(workdir, "--config.training.n_iters=24")
  return workdir


def wait_for_checkpoint(workdir, proc, min_step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = train_utils.checkpoint_steps(workdir)
    if any(s >= min_step for s in steps["checkpoints-meta"] + steps["checkpoints"]):
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared in time")


def test_sigkill_then_resume_equals_an_uninterrupted_run_bitwise(finished_run, tmp_path):
  workdir = str(tmp_path)
  # A shorter run first; raising n_iters afterwards is how a run is extended.
  train_utils.run_train(workdir, "--config.training.n_iters=12")
  proc = subprocess.Popen(train_utils.train_command(workdir, "--config.training.n_iters=24"),
                          env=train_utils.env_with(), cwd=train_utils.ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    wait_for_checkpoint(workdir, proc, random.choice([16, 20]))
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert max(train_utils.checkpoint_steps(workdir)["checkpoints-meta"]) < 24
  train_utils.run_train(workdir, "--config.training.n_iters=24")
  step_a, state_a = train_utils.latest_state(finished_run)
  step_b, state_b = train_utils.latest_state(workdir)
  assert step_a == step_b == 24
  assert state_a.keys() == state_b.keys()
  for key in state_a:
    np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)  # bitwise on CPU
  # The eval stream resumes at its position too: the eval losses at steps 10 and 20 (one before the first
  # restart, one after) are the uninterrupted run's.
  eval_a, eval_b = train.logged_scalars(finished_run, "eval_loss"), train.logged_scalars(workdir, "eval_loss")
  assert sorted(eval_a) == sorted(eval_b) == [10, 20]
  assert [eval_b[s] for s in (10, 20)] == [eval_a[s] for s in (10, 20)]


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
  workdir = str(tmp_path)
  proc = subprocess.Popen(train_utils.train_command(workdir, "--config.training.n_iters=100000",
                                                    "--config.training.snapshot_freq_for_preemption=1000"),
                          env=train_utils.env_with(), cwd=train_utils.ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(workdir, "tensorboard")) and time.time() < deadline:
      time.sleep(0.05)
    time.sleep(3)  # let it train for a while
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  # 143 = 128 + SIGTERM: "stopped, rerun me" for schedulers (before: 0, read as finished).
  assert proc.returncode == 143, stderr[-3000:]
  assert "SIGTERM: checkpoint saved at step" in stderr
  assert "preempted (SIGTERM): checkpoint saved at step" in stderr and "rerun the same command" in stderr
  saved = int(stderr.split("SIGTERM: checkpoint saved at step")[1].split(";")[0])
  assert saved in train_utils.checkpoint_steps(workdir)["checkpoints-meta"]


def test_one_and_eight_devices_give_the_same_loss_curve(finished_run, tmp_path):
  workdir = str(tmp_path)
  train_utils.run_train(workdir, "--config.training.n_iters=24", devices=8)
  curve_1 = train.logged_scalars(finished_run, "train_loss")
  curve_8 = train.logged_scalars(workdir, "train_loss")
  assert sorted(curve_1) == sorted(curve_8) and len(curve_1) == 12
  # Same global batch and rng; only the order of floating-point reductions differs across 8 devices.
  np.testing.assert_allclose([curve_8[s] for s in sorted(curve_8)], [curve_1[s] for s in sorted(curve_1)],
                             rtol=1e-4)
  _, state_1 = train_utils.latest_state(finished_run)
  _, state_8 = train_utils.latest_state(workdir)
  for key in state_1:
    np.testing.assert_allclose(state_8[key], state_1[key], rtol=1e-3, atol=1e-5, err_msg=key)


def test_non_finite_loss_stops_training_with_the_step(tmp_path):
  workdir = str(tmp_path)
  proc = train_utils.run_train(workdir, "--config.training.n_iters=200", "--config.optim.lr=1e15",
                               "--config.optim.warmup=0", "--config.optim.grad_clip=-1", check=False)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite training loss"), last
  bad_step = int(last.split(" at step ")[1].split(";")[0])
  steps = train_utils.checkpoint_steps(workdir)
  assert all(s < bad_step for s in steps["checkpoints"] + steps["checkpoints-meta"])


def test_checkpoint_of_another_model_is_refused_and_kept(finished_run):
  before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(finished_run) for p in files
            if "checkpoints" in d}
  proc = train_utils.run_train(finished_run, "--config.training.n_iters=30", "--config.model.nf=16", check=False)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert "holds a different model than this config" in last and "nothing was overwritten" in last, last
  after = {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(finished_run) for p in files
           if "checkpoints" in d}
  assert before == after
