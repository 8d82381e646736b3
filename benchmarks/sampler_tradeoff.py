"""NFE, wall time and sample quality of every sampler on the digits model, from the same latents.

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 TF_CPP_MIN_LOG_LEVEL=3 \
  python benchmarks/sampler_tradeoff.py --workdir runs/digits_vp --num_samples 256

Samplers (each built through `sampling.get_sampling_fn`, i.e. the config keys a user would set):
  em      Euler-Maruyama, the config's N (500 for digits), no corrector: the paper's "P1000" setting;
  pc      reverse diffusion + Langevin (snr from the config), N = --pc_steps (250: the same 500 NFE as em);
  ode     the probability flow, in-jit RK45 at rtol = atol = 1e-5: also the reference x_ref;
  ode3    the same at rtol = atol = 1e-3;
  ddim    K in --ddim_steps (10, 20, 50, 100), eta = 0, on each grid in --grids;
  heun    K in --heun_steps (10, 20, 50), on each grid in --grids.
Every sampler finishes with the config's noise removal. Latents: round r of --batch samples starts from the
prior draw keyed by fold_in(seed, r), shared by all samplers (the stochastic ones also draw their noise
from fold_in(seed + 1, r)).

Quality, per sampler, over all --num_samples samples:
  - every metric in METRICS (pluggable: name -> fn(samples, reference) -> float, images in [0, 1]; a
    classifier-feature FID can be added as `METRICS['fid_x'] = frechet_metric(features_fn)`); built in:
    'fd_pixels', the Frechet distance between Gaussian fits of the flattened 16x16 pixels (float64) of the
    samples (clipped to [0, 1], as images are saved) and of the digits test split (297 images). Its floor at
    this sample size is printed first: the same distance from --num_samples training images;
    'fid_classifier' (digits): the same distance on the features of the repo's digits classifier
    (`evaluation.get_feature_fn`, what `--mode eval` reports as FID), also against the test split;
  - mean |x - x_ref| (data space, unclipped) to the ODE sample from the same latent, for the deterministic
    samplers (ode3, ddim, heun).
Wall time: the median (and min-max) over the rounds of one compiled call on --batch samples; compile time apart.
NFE: score evaluations per round (the mean over rounds for the adaptive ODE solver); the ODE samplers' optional
denoising evaluation is not in their count (the 2021 convention), DDIM's and Heun's is.
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.sampling import load_model, malloc_note  # noqa: E402  pylint: disable=wrong-import-position
from score_sde import datasets, sampling, sde_lib  # noqa: E402  pylint: disable=wrong-import-position
from score_sde.models import utils as mutils  # noqa: E402  pylint: disable=wrong-import-position


# ------------------------------------------------------------------------------------------------ metrics
def pixel_features(images):
  """Flattened pixels in float64: (n, H W C)."""
  return np.asarray(images, np.float64).reshape(len(images), -1)


def frechet_distance(a, b):
  """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussian fits of two feature sets (n, d),
  in float64. tr (S_a S_b)^(1/2) = sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric
  PSD matrix: no complex round-off from a general matrix square root."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  w, v = np.linalg.eigh(cov_a)
  root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
               - 2 * np.sum(np.sqrt(np.clip(cross, 0, None))))


def frechet_metric(feature_fn):
  """A METRICS entry: the Frechet distance between feature_fn(samples) and feature_fn(reference)."""
  return lambda samples, reference: frechet_distance(feature_fn(samples), feature_fn(reference))


METRICS = {"fd_pixels": frechet_metric(pixel_features)}


# ------------------------------------------------------------------------------------------------ samplers
def sampler_settings(args):
  """[(row name, deterministic, {config key: value})] for every sampler of the comparison."""
  base = dict(noise_removal=True)
  rows = [
      ("em", False, dict(base, method="pc", predictor="euler_maruyama", corrector="none")),
      ("pc", False, dict(base, method="pc", predictor="reverse_diffusion", corrector="langevin",
                         n_steps_each=1, num_scales=args.pc_steps)),
      ("ode", True, dict(base, method="ode", ode_method="rk45", ode_rtol=1e-5, ode_atol=1e-5)),
      ("ode3", True, dict(base, method="ode", ode_method="rk45", ode_rtol=1e-3, ode_atol=1e-3)),
  ]
  for grid in args.grids.split(","):
    rows += [(f"ddim{k}-{grid}", True, dict(base, method="ddim", num_steps=k, time_grid=grid, ddim_eta=0.0))
             for k in map(int, args.ddim_steps.split(","))]
    rows += [(f"heun{k}-{grid}", True, dict(base, method="heun", num_steps=k, time_grid=grid))
             for k in map(int, args.heun_steps.split(","))]
  wanted = set(args.samplers.split(",")) if args.samplers else None
  rows = [r for r in rows if wanted is None or r[0].split("-")[0].rstrip("0123456789") in wanted or r[0] == "ode"]
  return rows


def build_sampler(config, model, settings, shape):
  """The jitted sampler for `settings` (sampling keys, plus num_scales for the model's N)."""
  config = config.copy_and_resolve_references()
  settings = dict(settings)
  if "num_scales" in settings:
    config.model.num_scales = settings.pop("num_scales")
  config.sampling.update(settings)
  sde = sde_lib.get_sde(config)
  score_fn = mutils.get_score_fn(sde, model, continuous=config.training.continuous,
                                  probability_flow=sampling.uses_probability_flow(config))
  return sampling.get_sampling_fn(config, sde, score_fn, shape, datasets.get_data_inverse_scaler(config),
                                  sde.default_sampling_eps)


def run_sampler(sampler, params, latents, seed):
  """(samples (n, ...), mean NFE per round, compile s, per-round wall times) over the rounds of `latents`."""
  rng = jax.random.PRNGKey(seed + 1)
  start = time.perf_counter()
  compiled = sampler.lower(rng, params, latents[0]).compile()
  compile_s = time.perf_counter() - start
  outs, times, nfes = [], [], []
  for r, z in enumerate(latents):
    start = time.perf_counter()
    x, nfe = jax.block_until_ready(compiled(jax.random.fold_in(rng, r), params, z))
    times.append(time.perf_counter() - start)
    outs.append(np.asarray(x))
    nfes.append(int(nfe))
  return np.concatenate(outs), float(np.mean(nfes)), compile_s, np.array(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/vp/digits.py")
  parser.add_argument("--workdir", default="runs/digits_vp")
  parser.add_argument("--ckpt", type=int, default=-1)
  parser.add_argument("--num_samples", type=int, default=256)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--pc_steps", type=int, default=250)
  parser.add_argument("--ddim_steps", default="10,20,50,100")
  parser.add_argument("--heun_steps", default="10,20,50")
  parser.add_argument("--grids", default="uniform", help="comma-separated time grids for ddim and heun")
  parser.add_argument("--samplers", default="", help="comma-separated subset of em,pc,ode,ddim,heun "
                      "(the reference ode always runs); default all")
  parser.add_argument("--metrics", default=",".join(list(METRICS) + ["fid_classifier"]))
  args = parser.parse_args()
  if args.num_samples % args.batch:
    raise ValueError(f"--num_samples={args.num_samples} must be a multiple of --batch={args.batch}.")
  metrics = {}
  for name in args.metrics.split(","):
    if name == "fid_classifier":
      continue  # added in main() once the config is known
    if name not in METRICS:
      raise ValueError(f"--metrics: {name!r} is not one of {sorted(METRICS)}.")
    metrics[name] = METRICS[name]
  note = malloc_note()
  if note:
    print(note)
  total_start = time.perf_counter()

  config, sde, model, _, params, step = load_model(args.config, args.workdir, args.ckpt)
  if config.data.dataset == "DIGITS" and "fid_classifier" in args.metrics.split(","):
    from score_sde import evaluation, image_utils  # pylint: disable=g-import-not-at-top
    feature_fn = evaluation.get_feature_fn(config)
    metrics["fid_classifier"] = frechet_metric(lambda x: feature_fn(image_utils.to_uint8(x))["pool_3"])
  h, c = config.data.image_size, config.data.num_channels
  shape = (args.batch, h, h, c)
  n_test = datasets.num_examples(config, "test")
  test = next(iter(datasets.eval_iterator(config, "test", batch_size=n_test)))["image"]
  train = next(iter(datasets.eval_iterator(config, "train", batch_size=args.num_samples)))["image"]
  rounds = args.num_samples // args.batch
  latents = [sde.prior_sampling(jax.random.fold_in(jax.random.PRNGKey(args.seed), r), shape) for r in range(rounds)]
  print(f"{args.config} step {step}: {args.num_samples} samples ({rounds} rounds of {args.batch}) vs the "
        f"{n_test} test images; {jax.device_count()} {jax.default_backend()} device(s)")
  print("floor (training images vs test): " + ", ".join(f"{k} {fn(train, test):.2f}" for k, fn in metrics.items()))

  header = ["sampler", "NFE", "s / round (min-max)", "compile s"] + list(metrics) + ["mean |x - x_ref|"]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  x_ref = None
  for name, deterministic, settings in sampler_settings(args):
    sampler = build_sampler(config, model, settings, shape)
    x, nfe, compile_s, times = run_sampler(sampler, params, latents, args.seed)
    if name == "ode":
      x_ref = x
    clipped = np.clip(x, 0.0, 1.0)
    scores = [f"{fn(clipped, test):.2f}" for fn in metrics.values()]
    dist = f"{np.mean(np.abs(x - x_ref)):.4f}" if deterministic and x_ref is not None else "-"
    print(f"| {name} | {nfe:g} | {np.median(times):.2f} ({times.min():.2f}-{times.max():.2f}) | {compile_s:.1f} | "
          + " | ".join(scores) + f" | {dist} |", flush=True)
  print(f"total {time.perf_counter() - total_start:.0f} s")


if __name__ == "__main__":
  main()
