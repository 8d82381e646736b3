"""Speed of the compiled train step (loss, gradients, clipping, Adam, EMA), the input pipeline, and FLOP/s.

  python benchmarks/train_step.py --config configs/vp/cifar10_ddpmpp_continuous.py --batch 8
  python benchmarks/train_step.py --config configs/vp/cifar10_ddpmpp_continuous.py --small --batch 32

`--small` is the issue's reference network: DDPM++ with nf=32, ch_mult (1,2,2), 1 res block, attention at 8,
16x16x3 (1,260,547 parameters). Prints the median and spread of several timed steps after warm-up, the
step's FLOPs from XLA's cost analysis divided by its time, and this machine's large-matmul FLOP/s.

This VM backs memory lazily and returns freed memory to the OS, which makes timings jump; run with
  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000
so that glibc serves every block from one sbrk heap and never gives it back. (MALLOC_MMAP_THRESHOLD_ cannot
do it: glibc caps it at 32 MiB, so XLA's per-step temporary buffer, 110 MB for the small DDPM++ at batch 32,
was mmapped and faulted in again on every step, ~27k page faults per step; with these settings, none.)
On one CPU the step runs the native kernels (score_sde/cpu_kernels: convs in oneDNN, fused GroupNorm) when the
[cpu] extra is installed, unless `--conv_impl xla` (training.conv_impl, resolved by score_sde/models/ops.py).
"""
import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_checks, losses, train_state
from score_sde.models import ops
from score_sde.models import utils as mutils


def load_config(path):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def benchmark_config(path, small=False, batch=None):
  """The config at `path`; `small` shrinks it to the issue's reference DDPM++ (16x16, nf=32, ...)."""
  config = load_config(path)
  if small:
    config.data.image_size = 16
    config.model.update(nf=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
  if batch:
    config.training.batch_size = batch
  return config


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return np.array(times)


def matmul_flops(n=4096, repeats=5):
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  return 2 * n ** 3 / np.median(timed(lambda: f(a), repeats))


def train_ops(config, conv_impl=None):
  """The `ops.Ops` the train step computes with: `conv_impl`, default `training.conv_impl`, as it resolves here."""
  return ops.resolve(conv_impl or config.training.conv_impl)


def build_step(config, conv_impl=None):
  """(train step, its state, batch, rng, parameter count) for `config`, the step not yet jitted; the loss
  computes with `train_ops(config, conv_impl)`, as `train.train` builds it."""
  sde, model = config_checks.validate_config(config)
  b, s, c = config.training.batch_size, config.data.image_size, config.data.num_channels
  optimizer = losses.get_optimizer(config.optim)
  state = train_state.init_train_state(config, model, jax.random.PRNGKey(0), optimizer=optimizer)
  model = ops.with_ops(model, train_ops(config, conv_impl))
  step = losses.get_train_step(losses.get_loss_fn_from_config(config, sde, model, train=True), optimizer,
                               config.model.ema_rate)
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (b, s, s, c))}
  return step, state, batch, jax.random.PRNGKey(2), mutils.count_params(state.params)


def compile_step(config):
  """(compiled train step, its state, batch, rng, FLOPs, compile seconds, parameter count) for `config`.

  FLOPs come from XLA's cost analysis of the step with XLA's convs (custom calls report none).
  """
  step, state, batch, rng, n_params = build_step(config)
  lowered = jax.jit(step, donate_argnums=0).lower(state, batch, rng)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  if train_ops(config) is not ops.XLA:
    xla_step = build_step(config, "xla")[0]
    lowered = jax.jit(xla_step).lower(state, batch, rng)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, state, batch, rng, float(cost.get("flops", float("nan"))), compile_s, n_params


def time_step(config, repeats=10, warmup=3):
  """Times of `repeats` compiled train steps after `warmup` untimed ones, plus (flops, compile_s, n_params)."""
  compiled, state, batch, rng, flops, compile_s, n_params = compile_step(config)
  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch, rng)
    return metrics["loss"]

  timed(one_step, warmup)  # first touches of memory are slow on this VM
  return timed(one_step, repeats), flops, compile_s, n_params


def input_pipeline_speed(config, mock_examples=0, batches=50):
  """Images/s of `datasets.train_iterator` alone (decode, crop/resize, flip, batch), after a warm-up batch.

  mock_examples > 0 runs the real TFDS pipeline on `tfds.testing.mock_data` (random images of the right
  shapes; file reading is skipped, so this is an upper bound for a real disk).
  """
  import contextlib  # pylint: disable=g-import-not-at-top
  from score_sde import datasets  # pylint: disable=g-import-not-at-top
  mock = contextlib.nullcontext()
  if mock_examples:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    mock = tfds.testing.mock_data(num_examples=mock_examples)
  with mock:
    it = datasets.train_iterator(config)
    next(it)
    times = []
    for _ in range(batches):
      start = time.perf_counter()
      next(it)
      times.append(time.perf_counter() - start)
  b = config.training.batch_size
  med = float(np.median(times))
  return (f"input pipeline alone ({config.data.dataset}{', TFDS mock data' if mock_examples else ''}): "
          f"{b / med:.0f} images/s median per batch, {b * len(times) / sum(times):.0f} images/s overall "
          f"(batch {b}, {len(times)} batches)")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/vp/cifar10_ddpmpp_continuous.py")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--conv_impl", default=None, choices=ops.IMPLS,
                      help="training.conv_impl for the step (default: the config's, 'auto')")
  parser.add_argument("--data", action="store_true", help="also time the input pipeline alone")
  parser.add_argument("--mock_data", type=int, default=0,
                      help="time the input pipeline on this many TFDS mock examples (no download needed)")
  args = parser.parse_args()

  config = benchmark_config(args.config, args.small, args.batch)
  if args.conv_impl:
    config.training.conv_impl = args.conv_impl
  if args.data:
    print(input_pipeline_speed(config, args.mock_data))
  b, s, c = config.training.batch_size, config.data.image_size, config.data.num_channels
  times, flops, compile_s, n_params = time_step(config, args.repeats)
  median = float(np.median(times))
  print(f"config={args.config}{' (small)' if args.small else ''} batch={b} image={s}x{s}x{c} "
        f"params={n_params:,} devices={jax.device_count()} backend={jax.default_backend()} "
        f"ops={train_ops(config).name}")
  print(f"compile: {compile_s:.1f} s")
  print(f"train step: median {median * 1e3:.1f} ms (min {times.min() * 1e3:.1f}, max {times.max() * 1e3:.1f}, "
        f"n={len(times)}) -> {1 / median:.2f} steps/s, {b / median:.1f} images/s")
  print(f"step FLOPs (XLA cost analysis): {flops / 1e9:.2f} GFLOP -> {flops / median / 1e9:.1f} GFLOP/s")
  print(f"machine matmul (4096^2 f32): {matmul_flops() / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
  main()
