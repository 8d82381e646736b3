"""Entry points behind `main.py --mode ...`: config in, work done in `workdir`."""


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
  del workdir  # the statistics file lives at evaluation.stats_path(config), shared by every run of the data
  from score_sde import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  return evaluate_lib.compute_stats(config)


MODES = {
    "train": lambda config, workdir, eval_folder: train(config, workdir),
    "eval": evaluate,
    "sample": sample,
    "stats": lambda config, workdir, eval_folder: compute_stats(config, workdir),
}
