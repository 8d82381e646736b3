"""Entry points behind `main.py --mode ...`: config in, work done in `workdir`."""
from score_sde import config_checks


class NotAvailableError(RuntimeError):
  """A mode that a later milestone implements."""


def train(config, workdir):
  from score_sde import train as train_lib  # pylint: disable=g-import-not-at-top
  train_lib.train(config, workdir)


def evaluate(config, workdir, eval_folder="eval"):
  config_checks.validate_config(config)
  raise NotAvailableError(f"--mode eval is not available yet (workdir {workdir} left untouched).")


def sample(config, workdir, eval_folder="eval"):
  from score_sde import generate  # pylint: disable=g-import-not-at-top
  return generate.sample(config, workdir, eval_folder)


def compute_stats(config, workdir):
  raise NotAvailableError("--mode stats is not available yet.")


MODES = {
    "train": lambda config, workdir, eval_folder: train(config, workdir),
    "eval": evaluate,
    "sample": sample,
    "stats": lambda config, workdir, eval_folder: compute_stats(config, workdir),
}
