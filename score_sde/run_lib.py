"""Entry points behind `main.py --mode ...`: config in, work done in `workdir`."""
from score_sde import config_checks


class NotAvailableError(RuntimeError):
  """A mode that a later milestone implements."""


def train(config, workdir):
  from score_sde import train as train_lib  # pylint: disable=g-import-not-at-top
  train_lib.train(config, workdir)


def evaluate(config, workdir, eval_folder="eval"):
  from score_sde import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  return evaluate_lib.evaluate(config, workdir, eval_folder)


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
