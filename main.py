"""score_sde command line: flags and dispatch only.

  python main.py --config configs/vp/digits.py --mode train --workdir runs/digits_vp
  python main.py --config configs/vp/cifar10.py --mode eval --workdir runs/cifar10_vp --config.eval.enable_bpd=True
"""
import logging
import sys

from absl import app
from absl import logging as absl_logging
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (overridable, e.g. --config.model.nf=64).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs and samples live here.")
flags.DEFINE_enum("mode", None, ["train", "eval", "sample", "stats"], "What to run (score_sde/run_lib.py).")
flags.DEFINE_string("eval_folder", "eval", "Folder under workdir for evaluation and sampling outputs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: multi-host (TPU pod, multi-node "
                  "GPU). On Cloud TPU and SLURM the cluster is detected; elsewhere give the three flags below.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir", "mode"])


class _QuietLibraries(logging.Filter):
  """Keeps Orbax's per-file INFO chatter off the console; warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  from score_sde import run_lib  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  try:
    run_lib.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS.eval_folder)
  except (ValueError, FloatingPointError) as e:
    # Bad input gets one clear line, not a traceback.
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
