"""Converts a released checkpoint (2021 Flax msgpack, PyTorch-port .pth) into our Orbax checkpoint, once.

  python scripts/convert_checkpoint.py --checkpoint exp/ve/cifar10_ncsnpp_continuous/checkpoint_24 \
      --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve_ncsnpp_released

Afterwards `--workdir runs/ve_ncsnpp_released` samples, evaluates (eval.begin_ckpt/end_ckpt: the snapshot
index step / training.snapshot_freq) and resumes training natively. Nothing is written if the file does
not fit the config, nor over an existing checkpoint of the same step.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Released checkpoint file (or an Orbax workdir).")
config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with.", lock_config=True)
flags.DEFINE_string("workdir", None, "Workdir to write the Orbax checkpoint into.")
flags.mark_flags_as_required(["checkpoint", "config", "workdir"])


def main(argv):
  del argv
  from score_sde import checkpointing, pretrained  # pylint: disable=g-import-not-at-top
  from score_sde.models import utils as mutils  # pylint: disable=g-import-not-at-top
  fmt = pretrained.detect_format(FLAGS.checkpoint)
  start = time.perf_counter()
  state = pretrained.load_train_state(FLAGS.checkpoint, FLAGS.config)
  loaded = time.perf_counter() - start
  step = int(state.step)
  ckpts = checkpointing.Checkpoints(FLAGS.workdir, async_save=False)
  try:
    if step in ckpts.snapshots.all_steps():
      raise checkpointing.CheckpointError(f"{FLAGS.workdir} already holds a checkpoint of step {step}; use a new "
                                          "--workdir (nothing was written).")
    ckpts.save(step, state, snapshot=True)
    ckpts.wait()
  finally:
    ckpts.close()
  print(f"{FLAGS.checkpoint}: {fmt}, step {step}, {mutils.count_params(state.params)} parameters "
        f"(EMA {mutils.count_params(state.ema_params)}); loaded in {loaded:.1f} s, written to "
        f"{os.path.join(FLAGS.workdir, 'checkpoints', str(step))} in {time.perf_counter() - start - loaded:.1f} s.")


if __name__ == "__main__":
  app.run(main)
