"""Interleaved A/B timing of train-step variants in one process (robust to a noisy, shared machine).

  python benchmarks/ab_step.py --small --batch 32 --repeats 20 \
      '{"xla": {"cfg": {"training.conv_impl": "xla"}}, "onednn": {"cfg": {"training.conv_impl": "onednn"}}}'

Each variant is {"set": {"module.attr": value}, "opts": {XLA compiler option: value}, "cfg": {"section.key": v}}:
`cfg` overrides config fields (how the step computes is `training.conv_impl`: "xla", "onednn" or "auto", as
`ops.resolve` picks it), `set` assigns module attributes before the step is traced (a string "py:EXPR" is
evaluated, with `nn` = flax.linen, `dataclasses`, `layers` = score_sde.models.layers, `ops` =
score_sde.models.ops and `fast_dropout` = the native kernels' Dropout class in scope, e.g.
{"score_sde.cpu_kernels.fused.OPS": "py:dataclasses.replace(ops.resolve('onednn'), dropout=nn.Dropout)"}
with "cfg" {"training.conv_impl": "onednn"}; assignments persist into later variants, so give every variant
all the attributes you vary), `opts` are per-compile XLA options (the same names as XLA_FLAGS, e.g.
"xla_cpu_experimental_ynn_fusion_type"). All variants are
compiled first, then timed round-robin, so that background load hits them alike. Prints each variant's
first-step loss and grad norm (a quick numerics check) and its median / min / max step time.
Run with MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 (see train_step.py).
"""
import argparse
import dataclasses  # noqa: F401  (for "py:" values)
import importlib
import json
import os
import sys
import time

import flax.linen as nn  # noqa: F401  (for "py:" values)
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.train_step import benchmark_config, build_step  # noqa: E402  pylint: disable=wrong-import-position
from score_sde.models import layers, ops  # noqa: E402,F401  pylint: disable=wrong-import-position

from score_sde.cpu_kernels import dropout as _dropout  # noqa: E402  pylint: disable=wrong-import-position

fast_dropout = _dropout.Dropout  # the kernels' Dropout (pure JAX), under a name that "set" cannot overwrite


def build(args, cfg_overrides):
  config = benchmark_config(args.config, args.small, args.batch)
  for key, value in cfg_overrides.items():
    section, name = key.split(".")
    setattr(getattr(config, section), name, value)
  step, state, batch, _, _ = build_step(config)
  return jax.jit(step, donate_argnums=0), state, batch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("variants", help="JSON: {name: {set: {...}, opts: {...}, cfg: {...}}}")
  parser.add_argument("--config", default="configs/vp/cifar10_ddpmpp_continuous.py")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args()

  rng = jax.random.PRNGKey(2)
  compiled, states, batches = {}, {}, {}
  for name, spec in json.loads(args.variants).items():
    for key, value in spec.get("set", {}).items():
      module, attr = key.rsplit(".", 1)
      if isinstance(value, str) and value.startswith("py:"):
        value = eval(value[3:])  # pylint: disable=eval-used
      setattr(importlib.import_module(module), attr, value)
    step, state, batch = build(args, spec.get("cfg", {}))
    start = time.perf_counter()
    compiled[name] = step.lower(state, batch, rng).compile(compiler_options=spec.get("opts") or None)
    print(f"{name}: compile {time.perf_counter() - start:.1f} s", flush=True)
    states[name], metrics = compiled[name](state, batch, rng)
    batches[name] = batch
    print(f"{name}: loss {float(metrics['loss']):.7g} grad_norm {float(metrics['grad_norm']):.7g}", flush=True)
  times = {name: [] for name in compiled}
  for name in compiled:  # warm-up
    for _ in range(2):
      states[name], metrics = compiled[name](states[name], batches[name], rng)
      jax.block_until_ready(metrics)
  for _ in range(args.repeats):
    for name in compiled:
      start = time.perf_counter()
      states[name], metrics = compiled[name](states[name], batches[name], rng)
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - start)
  for name, t in times.items():
    t = np.array(t) * 1e3
    print(f"{name:24s} median {np.median(t):8.1f} ms  min {t.min():8.1f}  max {t.max():8.1f}  (n={len(t)})")


if __name__ == "__main__":
  main()
