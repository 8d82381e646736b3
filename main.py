"""score_sde command line: flags and dispatch only.

  python main.py --config configs/vp/digits.py --mode train --workdir runs/digits_vp
  python main.py --config configs/vp/cifar10.py --mode eval --workdir runs/cifar10_vp --config.eval.enable_bpd=True
"""
import errno
import logging
import os
import re
import sys

from absl import app
from absl import logging as absl_logging
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (overridable, e.g. --config.model.nf=64).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs and samples live here.")
flags.DEFINE_enum("mode", None, ["train", "eval", "sample", "stats", "train_classifier", "edit"],
                  "What to run (score_sde/run_lib.py).")
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


def _one_line(text):
  return " ".join(str(text).split())


def _config_override_with(argv, key):
  """The --config.<path> argument of argv whose path names `key`, or None."""
  for arg in argv[1:]:
    path = arg.split("=", 1)[0]
    if path.startswith("--config.") and key in path[len("--config."):].split("."):
      return path
  return None


def parse_flags(argv):
  """absl's flag parsing, with every problem of the command line (a missing or broken config file, an
  override of a key the config does not have, a value of the wrong type) reported as one line, exit 1."""
  try:
    rest = FLAGS(argv)
    if FLAGS["config"].value is not None:
      list(FLAGS.config.keys())  # a file that failed to load raises on first use: here, not mid-run
    return rest
  except flags.Error as e:
    sys.exit(f"error: {_one_line(e)} (see --helpshort)")
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a key that does not exist
    message = _one_line(e.args[0] if e.args else e).replace("\\", "")
    match = re.search(r"'([^'\"]+)'", message)
    key = match.group(1) if match else message
    override = _config_override_with(argv, key)
    hint = re.search(r"Did you mean [^?]*\?", message)
    sys.exit(f"error: {override + ': ' if override else ''}the config has no key {key!r}"
             f"{' (' + hint.group(0) + ')' if hint else ''}; overrides can only change keys the config file defines.")
  except Exception as e:  # pylint: disable=broad-except  (the config file is user code: it may raise anything)
    cause = e.__cause__ or e
    detail = re.sub(r"Failed loading config file \S+ |Attempted \[[^]]*\]: ", "", _one_line(cause))
    sys.exit(f"error: --config could not be loaded: {type(cause).__name__}: {detail}")


# Input the user controls fails with these (our own checks raise ValueError and its subclasses, e.g.
# checkpointing.CheckpointError); anything else is a bug and keeps its traceback.
_BAD_INPUT = (ValueError, FloatingPointError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
              FileExistsError, PermissionError)


def _error_line(e):
  if isinstance(e, OSError) and e.strerror:
    where = f" ({e.filename})" if e.filename else ""
    return f"error: {e.strerror}{where}" + (": free space, or use another --workdir; what was already written "
                                            "is intact." if e.errno == errno.ENOSPC else ".")
  return f"error: {_one_line(e)}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    try:
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                 num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    except (ValueError, RuntimeError) as e:
      sys.exit(f"error: --distributed found no cluster to join ({_one_line(e)}); on Cloud TPU and SLURM it is "
               "detected, elsewhere pass --coordinator_address, --num_processes and --process_id.")
  from score_sde import run_lib, train  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  try:
    run_lib.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS.eval_folder)
  except train.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(train.Preempted.EXIT_STATUS)
  except _BAD_INPUT as e:
    _exit_with(_error_line(e))
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    _exit_with(_error_line(e))


def _exit_with(line):
  """Prints `line` and exits 1 at once: a failed restore can leave the storage layer's asyncio tasks behind,
  whose teardown at interpreter exit would print tracebacks after the one line. Everything this process wrote
  is complete by now (writers wait for their checkpoints before an error leaves them)."""
  print(line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  logging.shutdown()
  os._exit(1)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
