"""Which checkpoints `--mode eval` evaluates, and waiting for those that training has not written yet.

Checkpoint k is the snapshot at step k * training.snapshot_freq (the 2021 numbering). Eval may run beside
training: a checkpoint not yet written is waited for while training keeps writing checkpoints; one that will
never be written is refused at once, naming the steps that exist.
"""
import time

from absl import logging

from score_sde import checkpointing, workdir_config

# How often to look for a checkpoint that training has not written yet, and after how long without any new
# checkpoint in the workdir the wait says that nothing seems to be writing there.
_POLL_SECONDS = 60
_IDLE_NOTICE_SECONDS = 15 * 60


# ------------------------------------------------------------------------------------------- checkpoint range
def checkpoint_steps(config):
  """The training steps of checkpoints begin_ckpt..end_ckpt (inclusive)."""
  e, t = config.eval, config.training
  if e.begin_ckpt < 1 or e.end_ckpt < e.begin_ckpt:
    raise ValueError(f"eval.begin_ckpt={e.begin_ckpt}, eval.end_ckpt={e.end_ckpt}: need 1 <= begin_ckpt <= "
                     "end_ckpt (checkpoint k is the snapshot at step k * training.snapshot_freq).")
  steps = [k * t.snapshot_freq for k in range(e.begin_ckpt, e.end_ckpt + 1)]
  if steps[-1] > t.n_iters:
    raise ValueError(f"eval.end_ckpt={e.end_ckpt} is step {steps[-1]}, beyond training.n_iters={t.n_iters}: it will "
                     f"never be written; use eval.end_ckpt <= {t.n_iters // t.snapshot_freq}.")
  return steps


def _never_written(workdir, step, snapshots):
  """Why the snapshot of `step` will never appear in `workdir`, or None if training may still write it.

  Training writes snapshots in order and records its latest config in config.json, so a step past that run's
  n_iters, a step that is not one of its snapshot steps, or a step older than a snapshot already written is
  never coming."""
  stored = workdir_config.stored(workdir)
  if stored is not None:
    t = stored.get("training", {})
    n_iters, freq = t.get("n_iters"), t.get("snapshot_freq")
    if n_iters is not None and step > n_iters:
      return f"the run in {workdir} trains to step {n_iters} (training.n_iters in its config.json)"
    if freq and step % freq and step != n_iters:
      return f"the run in {workdir} writes snapshots every {freq} steps (training.snapshot_freq in its config.json)"
  if snapshots and max(snapshots) > step:
    return f"a later snapshot (step {max(snapshots)}) is already written"
  return None


def _listing(steps):
  return f"steps there: {steps}" if steps else "no checkpoint there yet"


def wait_for_checkpoint(workdir, step, timeout):
  """Blocks until the checkpoint of `step` exists (training may still be running).

  Gives up once `timeout` seconds (eval.ckpt_wait_secs) pass without any new checkpoint in the workdir, so an
  eval beside a training that keeps writing waits as long as that training runs; says so after
  `_IDLE_NOTICE_SECONDS` without one; refuses at once a step that will never be written (`_never_written`).
  """
  ckpts = checkpointing.Checkpoints(workdir, read_only=True)
  try:
    seen, last_change, noticed = None, time.time(), False
    while True:
      ckpts.snapshots.reload()
      ckpts.preemption.reload()
      snapshots, steps = ckpts.snapshots.all_steps(), ckpts.all_steps()
      if step in steps:
        return
      why = _never_written(workdir, step, snapshots)
      if why:
        raise checkpointing.CheckpointError(f"the checkpoint of step {step} will never be written: {why}; "
                                            f"{_listing(steps)}. Evaluate those (eval.begin_ckpt / end_ckpt).")
      now = time.time()
      if seen is None:
        logging.info("Waiting for the checkpoint of step %d in %s (%s) ...", step, workdir, _listing(steps))
        print(f"waiting for the checkpoint of step {step} in {workdir} ({_listing(steps)})", flush=True)
      elif steps != seen:
        last_change = now
      seen = steps
      idle = now - last_change
      if idle >= timeout:
        raise checkpointing.CheckpointError(
            f"checkpoint of step {step} did not appear in {workdir}: nothing new was written there for "
            f"{timeout:g} s (eval.ckpt_wait_secs; {_listing(steps)}); is training running? Train further or "
            "lower eval.end_ckpt.")
      if idle >= _IDLE_NOTICE_SECONDS and not noticed:
        noticed = True
        message = (f"nothing has written a checkpoint to {workdir} for {idle / 60:.0f} min while waiting for step "
                   f"{step} ({_listing(steps)}): is training running there?")
        logging.warning(message)
        print(f"warning: {message}", flush=True)
      time.sleep(min(_POLL_SECONDS, max(0.0, timeout - idle)))
  finally:
    ckpts.close()
