"""What `main.py --mode <mode>` runs: one function per mode, config in, work done in `workdir`.

  train   `train.train`: trains, checkpoints, logs and samples; resumes by itself
  eval    `evaluate.evaluate`: loss, bits/dim, the DDPM bound and FID/IS/KID of checkpoints
  sample  `generate.sample`: eval.num_samples images from one checkpoint, in resumable rounds
  stats   `evaluate.compute_stats`: the data set's reference statistics for FID/KID (shared by every run of
          that data, so it lives at `evaluation.stats_path(config)`, not in the workdir)
"""
from score_sde import evaluate, files, generate, train

MODES = ("train", "eval", "sample", "stats")


def run(mode, config, workdir, eval_folder="eval"):
  """Runs `mode` on `config` in `workdir`; eval and sample write under `<workdir>/<eval_folder>`."""
  if mode in ("train", "eval", "sample"):
    files.check_workdir(workdir)
  if mode == "train":
    return train.train(config, workdir)
  if mode == "eval":
    return evaluate.evaluate(config, workdir, eval_folder)
  if mode == "sample":
    return generate.sample(config, workdir, eval_folder)
  if mode == "stats":
    return evaluate.compute_stats(config)
  raise ValueError(f"--mode={mode!r} is not one of {list(MODES)}.")
