"""`--mode sample`: draws `eval.num_samples` images from a checkpoint's EMA parameters, in resumable rounds.

Round r uses rng fold_in(seed, r) and is written as
`<workdir>/<eval_folder>/samples/step_<s>/<method>-<digest>/samples_<r>.npz` (uint8) plus a PNG grid, the
folder's name a digest of everything that determines the rounds (`work_keys`: checkpoint, model, SDE, data,
seed, the sampler and its settings, batch size; `key.json` there lists it). A finished round is never redone,
so an interrupted run picks up where it stopped and produces the same files; a run with another sampler or
batch size draws anew into its own folder. `eval.num_samples` is not part of the key: a round holds the first
images of the batch its rng draws, so raising the number redraws only the (shorter) last round.
"""
import math
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
import tqdm

from score_sde import (config_checks, datasets, files, image_utils, parallel, sampling, settings, train_state,
                       work_keys)
from score_sde.models import utils as mutils


def sample(config, workdir, eval_folder="eval"):
  sde, model = config_checks.validate_config(config)
  num_samples, batch = int(config.eval.num_samples), int(config.eval.batch_size)
  if num_samples < 1:
    raise ValueError(f"eval.num_samples={num_samples} must be >= 1.")
  mesh = parallel.make_mesh()
  step, params = train_state.restore_ema_params(config, workdir, model, mesh)
  h, c = config.data.image_size, config.data.num_channels
  score_fn = mutils.get_score_fn(sde, model, continuous=config.training.continuous,
                                  probability_flow=sampling.uses_probability_flow(config))
  sampler = sampling.get_sampling_fn(config, sde, score_fn, (batch, h, h, c),
                                     datasets.get_data_inverse_scaler(config), sde.default_sampling_eps,
                                     sharding=parallel.sampler_sharding(mesh))
  sample_fn = jax.jit(sampler, out_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh)))
  key = work_keys.work_key(config, step, work_keys.params_digest(params), eval_keys=("batch_size", "uint8_rounding"),
                           with_sampling=True)
  folder = work_keys.unit_folder(epath.Path(workdir) / eval_folder / "samples" / f"step_{step}",
                                 settings.SamplingSettings.from_config(config).method, key)
  rounds = math.ceil(num_samples / batch)
  rounding = settings.EvalSettings.from_config(config).uint8_rounding  # False: the 2021 truncation (image_utils.to_uint8)
  base_rng = jax.random.PRNGKey(config.seed)
  is_main = jax.process_index() == 0
  done, drawn, seconds, nfe = 0, 0, 0.0, None
  for r in tqdm.trange(rounds, desc=f"sampling step {step}", disable=not is_main):
    path = folder / f"samples_{r}.npz"
    wanted = min(batch, num_samples - r * batch)
    # Finished before an interruption: never redone (process 0's view decides, so all processes sample or none).
    if parallel.process0_decides(path.exists() and len(files.load_npz(path)["samples"]) >= wanted):
      done += 1
      continue
    start = time.perf_counter()
    images, nfe = sample_fn(jax.random.fold_in(base_rng, r), params)
    images = np.asarray(multihost_utils.process_allgather(images, tiled=True))
    seconds += time.perf_counter() - start
    images = image_utils.to_uint8(images[:wanted], rounding)
    drawn += len(images)
    if is_main:
      # The npz is the round's 'done' marker, so it is written last.
      files.write_atomically(folder / f"samples_{r}.png", lambda f, x=images: image_utils.save_grid(x, f))
      files.write_atomically(path, lambda f, x=images: np.savez_compressed(f, samples=x))
  if drawn:
    logging.info("Sampled %d images (%d rounds skipped as done) from step %d: NFE %d per sample, %.2f images/s "
                 "-> %s", drawn, done, step, int(nfe), drawn / seconds, folder)
  if is_main:  # one line per run, not per process
    print(f"{drawn} samples from step {step} in {folder}: NFE {int(nfe)}, {drawn / seconds:.2f} images/s "
          f"(first round includes compilation)" if drawn else f"all {rounds} rounds already in {folder}; nothing "
          "to do.")
  return folder


