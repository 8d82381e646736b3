"""Memory and FLOPs of the compiled train step under the memory knobs, and projected TPU steps/s.

  python benchmarks/memory.py                                  # DDPM++ 32px and NCSN++ 256px, all variants
  python benchmarks/memory.py --configs ddpmpp --variants baseline,remat
  python benchmarks/memory.py --configs ncsnpp256 --batches 1,2

Each variant's train step (loss, gradients, clipping, Adam, EMA: `losses.get_train_step_from_config`, the
state donated as train.py does) is lowered with abstract inputs (`jax.ShapeDtypeStruct`, the state from
`jax.eval_shape`) and compiled by XLA for this machine's backend with XLA's own convs (`ops.XLA`); nothing
runs. From `compiled.memory_analysis()`: temporary, argument and output bytes; from
`compiled.cost_analysis()`: FLOPs. Each is compiled at two batch sizes: the difference over the examples
added is the per-example cost (the slope), the rest is per-step (parameters, optimizer state, gradients).

"saved MiB/ex" is what the backward pass needs kept from the forward pass: the residuals of the loss's
`jax.vjp` (their shapes by `jax.eval_shape`), per example: the activation memory remat and bfloat16 exist to
cut, whatever a backend's scheduler does (XLA's fusions keep fewer than that, recomputing cheap elementwise
results, so compiled temporaries can be smaller).

By default XLA:CPU removes jax.checkpoint's optimization barriers early (its `cse_barrier_expander` pass) and
then schedules the recomputation alongside the forward pass: remat's FLOPs are there, its memory saving is
not. TPU and GPU compilers keep the barriers through scheduling, so this script compiles with that pass off
(XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander, set below before jax starts) and XLA:CPU then
schedules as they do; `--cpu_barrier_expander` keeps XLA:CPU's default. XLA:CPU also computes bfloat16
elementwise work in float32, which TPUs do not: its bfloat16 temporaries overstate a TPU's.

variants: baseline (float32, no remat), remat (`training.remat`), bf16 (`training.compute_dtype=bfloat16`),
remat+bf16. `training.grad_accum_steps` k needs no compile to size: the per-example temporaries scale with
the micro-batch, B / k examples, while the per-step part stays.

The projection (DDPM++ cont. at the paper's batch of 128) is arithmetic on the measured FLOPs per example:
compute = batch x FLOPs/example / (chips x peak x MXU utilisation), all-reduce = the ring's bytes per device
/ its share of the interconnect, steps/s = 1 / (compute + all-reduce) (no overlap assumed), at an assumed
utilisation and at the one that the DDPM paper's 21 steps/s (35.7M parameters, v3-8, batch 128) implies for
the DDPM model's measured FLOPs (configs/vp/ddpm/cifar10.py, its 2021 port: 35.2M parameters).
Compile times on a 2-core CPU: seconds for 32px, minutes per variant for 256px.
"""
import argparse
import importlib.util
import os
import sys
import time

if "--cpu_barrier_expander" not in sys.argv:  # before jax starts (see the module note)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_disable_hlo_passes=cse_barrier_expander").strip()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from score_sde import losses, sde_lib, train_state  # pylint: disable=wrong-import-position
from score_sde.models import utils as mutils  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {  # name: (config file, the two batch sizes compiled)
    "ddpmpp": ("configs/vp/cifar10_ddpmpp_continuous.py", (2, 4)),
    "ncsnpp256": ("configs/ve/ffhq_256_ncsnpp_continuous.py", (1, 2)),
    "ddpm": ("configs/vp/ddpm/cifar10.py", (2, 4)),  # the DDPM paper's model: calibrates the projection
}
VARIANTS = {
    "baseline": dict(remat=False, compute_dtype="float32"),
    "remat": dict(remat=True, compute_dtype="float32"),
    "bf16": dict(remat=False, compute_dtype="bfloat16"),
    "remat+bf16": dict(remat=True, compute_dtype="bfloat16"),
}

# TPU v3 (Cloud TPU v3 documentation): 123 TFLOP/s bf16 peak per chip (2 TensorCores), 340 TB/s all-reduce
# bandwidth per 1024-chip pod, i.e. about 332 GB/s per chip, 166 GB/s per core.
V3_PEAK_PER_CHIP = 123e12
V3_ALLREDUCE_PER_CORE = 340e12 / 1024 / 2
MXU_UTILISATION = 0.40  # assumed (convs of 128-256 channels at 4-32 px); the DDPM paper's speed calibrates it
PAPER_BATCH = 128
DDPM_PAPER_STEPS_PER_S = 21.0  # Ho et al. 2020, App. B: 35.7M parameters, TPU v3-8, batch 128


def load_config(path):
  spec = importlib.util.spec_from_file_location("memory_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def compile_step(path, batch, remat, compute_dtype):
  """(memory_analysis, flops, parameter count, compile seconds) of the train step of `path` at `batch`."""
  config = load_config(path)
  config.training.update(batch_size=batch, remat=remat, compute_dtype=compute_dtype, grad_accum_steps=1)
  sde, model = sde_lib.get_sde(config), mutils.create_model(config)
  optimizer = losses.get_optimizer(config.optim)
  state = train_state.abstract_train_state(config, model, optimizer=optimizer)
  step = losses.get_train_step_from_config(config, sde, model, optimizer)
  size, channels = config.data.image_size, config.data.num_channels
  batch_spec = {"image": jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)}
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  lowered = jax.jit(step, donate_argnums=0).lower(state, batch_spec, rng)
  start = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled.memory_analysis(), float(cost.get("flops", float("nan"))), mutils.count_params(state.params), seconds


def saved_bytes(path, batch, remat, compute_dtype):
  """Bytes of the residuals the loss's backward pass keeps from its forward pass (nothing computed)."""
  config = load_config(path)
  config.training.update(batch_size=batch, remat=remat, compute_dtype=compute_dtype)
  sde, model = sde_lib.get_sde(config), mutils.create_model(config)
  loss_fn = losses.get_loss_fn_from_config(config, sde, losses.train_model(model, remat, compute_dtype),
                                           train=True)
  params = train_state.abstract_train_state(config, model).params
  size, channels = config.data.image_size, config.data.num_channels
  images = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  pullback = jax.eval_shape(lambda p, x, r: jax.vjp(lambda q: loss_fn(q, x, r), p)[1], params, images, rng)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(pullback))


def measure(path, batches, variant, compile_too=True):
  """{'saved', 'temp', 'argument', 'output', 'flops'}: (at batches[0], per example) each, plus params and
  compile seconds; without `compile_too` only 'saved' (and NaN for the rest)."""
  b1, b2 = batches
  nan = (float("nan"), float("nan"))
  out = {"seconds": 0.0, "batch": b1}
  saved = [saved_bytes(path, b, **VARIANTS[variant]) for b in batches]
  out["saved"] = (saved[0], (saved[1] - saved[0]) / (b2 - b1))
  if not compile_too:
    config = load_config(path)
    out["params"] = mutils.count_params(train_state.abstract_train_state(config, mutils.create_model(config)).params)
    return dict(out, temp=nan, argument=nan, output=nan, flops=nan)
  (m1, f1, params, s1), (m2, f2, _, s2) = (compile_step(path, b, **VARIANTS[variant]) for b in batches)
  out.update(params=params, seconds=s1 + s2)
  for key, (v1, v2) in (("temp", (m1.temp_size_in_bytes, m2.temp_size_in_bytes)),
                        ("argument", (m1.argument_size_in_bytes, m2.argument_size_in_bytes)),
                        ("output", (m1.output_size_in_bytes, m2.output_size_in_bytes)),
                        ("flops", (f1, f2))):
    out[key] = (v1, (v2 - v1) / (b2 - b1))
  return out


def _mb(n):
  return f"{n / 2**20:,.1f}"


def print_table(name, path, batches, rows):
  b1, b2 = batches
  print(f"\n{name}: {path}, {rows[next(iter(rows))]['params']:,} parameters; compiled at batch {b1} and {b2} "
        f"(per example = the difference / {b2 - b1}) on {jax.default_backend()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  head = (f"{'variant':<11} {'saved MiB/ex':>12} {'vs base':>8} {'temp MiB':>9} {'temp MiB/ex':>12} "
          f"{'vs base':>8} {'arg MiB':>8} {'out MiB':>8} {'GFLOP/step':>11} {'GFLOP/ex':>9} {'vs base':>8} "
          f"{'compile s':>10}")
  print(head)
  print("-" * len(head))
  base = rows.get("baseline")
  for variant, r in rows.items():
    less = lambda key: f"/{base[key][1] / r[key][1]:.2f}" if base else ""  # pylint: disable=cell-var-from-loop
    more = f"x{r['flops'][1] / base['flops'][1]:.3f}" if base else ""
    print(f"{variant:<11} {_mb(r['saved'][1]):>12} {less('saved'):>8} {_mb(r['temp'][0]):>9} "
          f"{_mb(r['temp'][1]):>12} {less('temp'):>8} {_mb(r['argument'][0]):>8} {_mb(r['output'][0]):>8} "
          f"{r['flops'][0] / 1e9:>11.2f} {r['flops'][1] / 1e9:>9.2f} {more:>8} {r['seconds']:>10.1f}")


def allreduce(params, cores):
  """(bytes of float32 gradients, bytes a ring all-reduce moves per device, seconds at the v3 bandwidth)."""
  grad_bytes = 4 * params
  per_device = 2 * (cores - 1) / cores * grad_bytes
  return grad_bytes, per_device, per_device / V3_ALLREDUCE_PER_CORE


def _steps_per_s(flops_per_example, params, cores, utilisation):
  """The arithmetic of one step at the paper's batch on `cores` v3 cores, as text ending in its steps/s."""
  chips = cores // 2
  compute = PAPER_BATCH * flops_per_example / (chips * V3_PEAK_PER_CHIP * utilisation)
  grad_bytes, per_device, comm = allreduce(params, cores)
  text = (f"compute {PAPER_BATCH} x {flops_per_example / 1e9:.2f} GFLOP / ({chips} chips x "
          f"{V3_PEAK_PER_CHIP / 1e12:.0f} TFLOP/s x {utilisation:.2f}) = {compute * 1e3:.2f} ms; all-reduce "
          f"2 x {cores - 1}/{cores} x {grad_bytes / 1e6:.1f} MB = {per_device / 1e6:.1f} MB per core / "
          f"{V3_ALLREDUCE_PER_CORE / 1e9:.0f} GB/s = {comm * 1e3:.2f} ms; {1 / (compute + comm):.1f} steps/s")
  return text


def implied_utilisation(flops_per_example, params, steps_per_s, cores=8):
  """The MXU utilisation at which the arithmetic gives `steps_per_s` on `cores` v3 cores."""
  compute_at_peak = PAPER_BATCH * flops_per_example / (cores // 2 * V3_PEAK_PER_CHIP)
  return compute_at_peak / (1 / steps_per_s - allreduce(params, cores)[2])


def print_projection(name, flops_per_example, params, utilisations):
  print(f"\nProjected steps/s, {name} ({params:,} parameters), batch {PAPER_BATCH}: "
        f"{flops_per_example / 1e9:.2f} GFLOP per example (train step, measured above)")
  print(f"  assumed: TPU v3 {V3_PEAK_PER_CHIP / 1e12:.0f} TFLOP/s bf16 peak per chip (2 cores), "
        f"all-reduce {V3_ALLREDUCE_PER_CORE / 1e9:.0f} GB/s per core (340 TB/s per 1024-chip pod), "
        "no compute/communication overlap")
  for label, utilisation in utilisations:
    for pod, cores in (("v3-8", 8), ("v3-32", 32)):
      print(f"  {pod}, MXU utilisation {utilisation:.0%} ({label}): "
            f"{_steps_per_s(flops_per_example, params, cores, utilisation)}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="ddpmpp,ncsnpp256,ddpm",
                      help=f"comma-separated, of {list(CONFIGS)} (ddpm: the projection's calibration only)")
  parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
  parser.add_argument("--batches", default="", help="two batch sizes to compile at (default: per config)")
  parser.add_argument("--cpu_barrier_expander", action="store_true",
                      help="compile with XLA:CPU's default passes (remat then saves no memory on CPU)")
  parser.add_argument("--saved_only", action="store_true",
                      help="only the backward pass's saved residuals (traced, nothing compiled: seconds)")
  args = parser.parse_args()
  names, variants = args.configs.split(","), args.variants.split(",")
  for bad, known, flag in ((set(names) - set(CONFIGS), CONFIGS, "--configs"),
                           (set(variants) - set(VARIANTS), VARIANTS, "--variants")):
    if bad:
      parser.error(f"{flag}: {sorted(bad)} not among {list(known)}")
  measured = {}
  for name in names:
    path, batches = CONFIGS[name]
    if args.batches:
      batches = tuple(int(b) for b in args.batches.split(","))
    chosen = ["baseline"] if name == "ddpm" else variants
    rows = {v: measure(path, batches, v, compile_too=not args.saved_only) for v in chosen}
    print_table(name, path, batches, rows)
    measured[name] = rows
  if args.saved_only:
    return
  baseline = {name: rows.get("baseline") or next(iter(rows.values())) for name, rows in measured.items()}
  utilisations = [("assumed", MXU_UTILISATION)]
  if "ddpm" in baseline:
    calibrated = implied_utilisation(baseline["ddpm"]["flops"][1], baseline["ddpm"]["params"],
                                     DDPM_PAPER_STEPS_PER_S)
    utilisations.append((f"what the DDPM paper's {DDPM_PAPER_STEPS_PER_S:.0f} steps/s on v3-8 implies", calibrated))
  for name, label in (("ddpmpp", "DDPM++ cont. (VP), 32px"), ("ddpm", "DDPM (Ho et al.), 32px")):
    if name in baseline:
      print_projection(label, baseline[name]["flops"][1], baseline[name]["params"], utilisations)


if __name__ == "__main__":
  main()
