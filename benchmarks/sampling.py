"""Speed of the compiled samplers on the digits model: is a sampler's time just its score evaluations?

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 TF_CPP_MIN_LOG_LEVEL=3 \
  python benchmarks/sampling.py --workdir runs/digits_vp --batch 64

Prints, each as median (min-max, n repeats) after warm-up:
1. one compiled score evaluation and one compiled probability-flow drift evaluation (batch B, t = 0.5);
2. the PC sampler (reverse diffusion + Langevin, n_steps_each = 1; --pc_steps N, default 50 to keep the run
   short: the ratio does not depend on N) against N (n_steps_each + 1) score evaluations (target: within 10%);
3. the ODE sampler (its default 'rk45' inside jit, rtol = atol = 1e-5) per function evaluation against one
   drift evaluation (target: within 10%), and its NFE against scipy RK45's (`get_ode_sampler_scipy`, the 2021
   code's host loop) from the same latent at the same tolerances (target: within 10%); also the NFE of
   diffrax's own Dopri5 pair, whose smaller error estimate takes fewer steps (see `flow.RK45`).
The in-jit solve makes no host round trip per evaluation: its whole solve is one device call; scipy's pays a
round trip (and a float64 <-> float32 copy of the state) per evaluation, printed as its overhead per NFE.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.train_step import load_config  # noqa: E402  pylint: disable=wrong-import-position
from score_sde import (  # noqa: E402  pylint: disable=wrong-import-position
    config_checks, datasets, flow, ode_sampler, parallel, pc_sampler, sde_lib, train_state)
from score_sde.models import utils as mutils  # noqa: E402  pylint: disable=wrong-import-position


def load_model(config_path, workdir, ckpt_id=-1):
  """(config, sde, model, score_fn, EMA params, step) of a trained checkpoint (`ckpt_id` -1: the newest)."""
  config = load_config(config_path)
  config.eval.ckpt_id = ckpt_id
  sde, model = config_checks.validate_config(config)
  step, params = train_state.restore_ema_params(config, workdir, model, parallel.make_mesh())
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=config.training.continuous)
  return config, sde, model, score_fn, params, step


def timed(fn, repeats, warmup=1):
  """(wall times in s of `repeats` calls of fn, blocking on its result, after `warmup` untimed ones; the last
  result)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return np.array(times), out


def spread(times, unit=1e3, suffix="ms"):
  return (f"median {np.median(times) * unit:.1f} {suffix} (min {times.min() * unit:.1f}, "
          f"max {times.max() * unit:.1f}, n={len(times)})")


def malloc_note():
  if not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
    return ("note: MALLOC_ARENA_MAX/MALLOC_MMAP_MAX_/MALLOC_TRIM_THRESHOLD_ are not set; timings on this VM jump when "
            "glibc returns memory to the OS (see the module docstring).")
  return ""


def eval_loop(fn, x, count):
  """A jitted loop of `count` dependent evaluations x <- x + 1e-6 fn(x): what a sampler's evaluations would cost
  with no per-step overhead at all (no dispatch per call either, unlike timing single calls)."""
  body = lambda _, x: x + 1e-6 * fn(x)
  return jax.jit(lambda x: jax.lax.fori_loop(0, count, body, x))


def interleaved(fns, repeats):
  """Per fn, the wall times of `repeats` calls, taken round-robin after one untimed call each, so that
  background load on a shared machine hits every fn alike. Returns (times per fn, last result per fn)."""
  outs = [jax.block_until_ready(fn()) for fn in fns]
  times = [[] for _ in fns]
  for _ in range(repeats):
    for k, fn in enumerate(fns):
      start = time.perf_counter()
      outs[k] = jax.block_until_ready(fn())
      times[k].append(time.perf_counter() - start)
  return [np.array(t) for t in times], outs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/vp/digits.py")
  parser.add_argument("--workdir", default="runs/digits_vp")
  parser.add_argument("--ckpt", type=int, default=-1)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--pc_steps", type=int, default=50, help="N of the timed PC sampler")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls of the PC sampler")
  parser.add_argument("--ode_repeats", type=int, default=3, help="timed calls of the ODE sampler")
  parser.add_argument("--eval_repeats", type=int, default=20, help="timed single evaluations")
  args = parser.parse_args()
  note = malloc_note()
  if note:
    print(note)

  config, sde, _, score_fn, params, step = load_model(args.config, args.workdir, args.ckpt)
  h, c = config.data.image_size, config.data.num_channels
  shape = (args.batch, h, h, c)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  eps = sde.default_sampling_eps
  print(f"{args.config} step {step}, batch {shape}, {jax.device_count()} {jax.default_backend()} device(s)")

  # 1. The unit costs, one call each (these include a dispatch per call).
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  t = jnp.full((args.batch,), 0.5)
  score = lambda y: score_fn(params, y, t)
  drift = lambda y: flow.flow_drift(sde, score_fn, params, y, 0.5)
  score_jit, drift_jit = jax.jit(score), jax.jit(drift)
  start = time.perf_counter()
  jax.block_until_ready(drift_jit(x))
  drift_compile_s = time.perf_counter() - start
  t_score = timed(lambda: score_jit(x), args.eval_repeats, warmup=3)[0]
  t_drift = timed(lambda: drift_jit(x), args.eval_repeats, warmup=3)[0]
  print(f"score evaluation, single call: {spread(t_score)}")
  print(f"flow drift evaluation, single call: {spread(t_drift)} (first call with compilation "
        f"{drift_compile_s:.1f} s)")
  drift_s = float(np.median(t_drift))

  # 2. PC sampler vs N (n_steps + 1) score evaluations in one compiled loop, interleaved.
  n = args.pc_steps
  pc_config = config.copy_and_resolve_references()
  pc_config.model.num_scales = n
  pc = pc_sampler.get_pc_sampler(sde_lib.get_sde(pc_config), score_fn, shape, "reverse_diffusion", "langevin",
                                 inverse_scaler, snr=config.sampling.snr, n_steps=1, eps=eps)
  rng = jax.random.PRNGKey(1)
  nfe_pc = 2 * n
  loop = eval_loop(score, x, nfe_pc)
  (t_pc, t_loop), (pc_out, _) = interleaved([lambda: pc(rng, params), lambda: loop(x)], args.repeats)
  assert int(pc_out[1]) == nfe_pc
  ratio = np.median(t_pc) / np.median(t_loop)
  print(f"PC sampler (reverse_diffusion + langevin, N={n}, NFE {nfe_pc}): {spread(t_pc, 1, 's')}")
  print(f"  {nfe_pc} score evaluations in one compiled loop: {spread(t_loop, 1, 's')} "
        f"({np.median(t_loop) / nfe_pc * 1e3:.1f} ms each) -> sampler / evaluations = {ratio:.3f}; "
        f"vs NFE x one single-call score evaluation: {np.median(t_pc) / (nfe_pc * np.median(t_score)):.3f}")

  # 3. ODE sampler in jit vs its NFE drift evaluations in one compiled loop, interleaved; then scipy's NFE.
  ode = ode_sampler.get_ode_sampler(sde, score_fn, shape, inverse_scaler, rtol=1e-5, atol=1e-5, eps=eps)
  z = sde.prior_sampling(jax.random.PRNGKey(2), shape)
  x_ode, nfe_ode = ode(None, params, z)
  nfe_ode = int(nfe_ode)
  loop = eval_loop(drift, x, nfe_ode)
  (t_ode, t_loop), _ = interleaved([lambda: ode(None, params, z), lambda: loop(x)], args.ode_repeats)
  per_eval = float(np.median(t_ode)) / nfe_ode
  print(f"ODE sampler (rk45 in jit, rtol=atol=1e-5): NFE {nfe_ode}, {spread(t_ode, 1, 's')} -> "
        f"{per_eval * 1e3:.1f} ms per evaluation")
  print(f"  {nfe_ode} drift evaluations in one compiled loop: {spread(t_loop, 1, 's')} -> solve / evaluations = "
        f"{np.median(t_ode) / np.median(t_loop):.3f}; per evaluation vs one single-call drift evaluation: "
        f"{per_eval / drift_s:.3f}")
  dopri5 = ode_sampler.get_ode_sampler(sde, score_fn, shape, inverse_scaler, rtol=1e-5, atol=1e-5, method="dopri5",
                                       eps=eps)
  nfe_dopri5 = int(dopri5(None, params, z)[1])
  scipy_ode = ode_sampler.get_ode_sampler_scipy(sde, score_fn, shape, inverse_scaler, rtol=1e-5, atol=1e-5,
                                                eps=eps)
  start = time.perf_counter()
  x_scipy, nfe_scipy = scipy_ode(None, params, z)
  scipy_s = time.perf_counter() - start - drift_compile_s  # its drift compiles on the first evaluation
  diff = float(jnp.max(jnp.abs(x_ode - x_scipy)))
  print(f"scipy RK45 (host loop, same latent and tolerances): NFE {nfe_scipy} -> in-jit/scipy NFE ratio "
        f"{nfe_ode / nfe_scipy:.3f} (diffrax's own Dopri5 pair: NFE {nfe_dopri5}, ratio "
        f"{nfe_dopri5 / nfe_scipy:.3f}); ~{scipy_s:.1f} s without compilation = "
        f"{scipy_s / nfe_scipy * 1e3:.1f} ms per evaluation ({(scipy_s / nfe_scipy - per_eval) * 1e3:+.1f} ms vs "
        f"in jit: one host round trip each); max |x_jit - x_scipy| = {diff:.2e}")


if __name__ == "__main__":
  main()
