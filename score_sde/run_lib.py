"""What `main.py --mode <mode>` runs: one function per mode, config in, work done in `workdir`.

  train   `train.train`: trains, checkpoints, logs and samples; resumes by itself
  eval    `evaluate.evaluate`: loss, bits/dim, the DDPM bound and FID/IS/KID of checkpoints
  sample  `generate.sample`: eval.num_samples images from one checkpoint, in resumable rounds
  stats   `evaluate.compute_stats`: the data set's reference statistics for FID/KID (shared by every run of
          that data, so it lives at `evaluation.stats_path(config)`, not in the workdir)
  train_classifier
          `classifier_training.train_classifier`: the noise-conditional classifier of class-conditional
          sampling, in `<workdir>/classifier`; resumes by itself
  edit    `edit.edit`: config.edit.task (inpaint, colorize, conditional, interpolate, progressive, encode) on
          real images with one checkpoint, in resumable rounds under `<workdir>/<eval_folder>/edit`
"""
from score_sde import classifier_training, edit, evaluate, files, generate, train

MODES = ("train", "eval", "sample", "stats", "train_classifier", "edit")


def run(mode, config, workdir, eval_folder="eval"):
  """Runs `mode` on `config` in `workdir`; eval, sample and edit write under `<workdir>/<eval_folder>`."""
  if mode in ("train", "eval", "sample", "train_classifier", "edit"):
    files.check_workdir(workdir)
  if mode == "train":
    return train.train(config, workdir)
  if mode == "eval":
    return evaluate.evaluate(config, workdir, eval_folder)
  if mode == "sample":
    return generate.sample(config, workdir, eval_folder)
  if mode == "stats":
    return evaluate.compute_stats(config)
  if mode == "train_classifier":
    return classifier_training.train_classifier(config, workdir)
  if mode == "edit":
    return edit.edit(config, workdir, eval_folder)
  raise ValueError(f"--mode={mode!r} is not one of {list(MODES)}.")
