"""Interleaved A/B timing of the same train step in two checkouts of this repository (e.g. before and after a
refactor), robust to a noisy, shared machine.

  git worktree add /tmp/before <commit>
  python benchmarks/ab_checkouts.py --before /tmp/before --after . --small --batch 32 --conv_impl xla
  python benchmarks/ab_checkouts.py --before /tmp/before --after . \
      --config configs/vp/cifar10_ddpmpp_continuous.py --batch 8 --conv_impl onednn --rounds 8 --steps 2

One worker process per checkout imports that checkout's `score_sde` and `benchmarks/train_step.py`, builds and
compiles the step (`build_step(config, conv_impl)`, which both sides must provide), warms it up and then times
`--steps` steps whenever asked; the driver asks the two workers in turn, `--rounds` times, so background load
hits both alike. Prints each side's median / min / max step time and the ratio after / before of the medians.
Run with MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 (see train_step.py).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

_WORKER = r"""
import json, sys, time
tree, config_path, small, batch, conv_impl = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, tree)
import jax
import score_sde
assert score_sde.__file__.startswith(tree), (score_sde.__file__, tree)
from benchmarks.train_step import benchmark_config, build_step
config = benchmark_config(config_path, small=small, batch=batch or None)
config.training.conv_impl = conv_impl
step, state, data, rng, n_params = build_step(config, conv_impl)
step = jax.jit(step, donate_argnums=0)
for _ in range(3):
  state, metrics = step(state, data, rng)
jax.block_until_ready(state)
print(json.dumps({"params": n_params, "loss": float(metrics["loss"])}), flush=True)
for line in sys.stdin:
  times = []
  for _ in range(int(line)):
    start = time.perf_counter()
    state, metrics = step(state, data, rng)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  print(json.dumps(times), flush=True)
"""


def start_worker(tree, args):
  tree = os.path.abspath(tree)
  cmd = [sys.executable, "-c", _WORKER, tree, os.path.join(tree, args.config), "1" if args.small else "0",
         str(args.batch or 0), args.conv_impl]
  return subprocess.Popen(cmd, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=tree))


def read_json(worker, name):
  line = worker.stdout.readline()
  if not line:
    raise RuntimeError(f"the {name} worker exited (exit status {worker.wait()}); see its error output above")
  return json.loads(line)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--before", required=True, help="checkout A (e.g. a git worktree of the old commit)")
  parser.add_argument("--after", default=".", help="checkout B (default: this one)")
  parser.add_argument("--config", default="configs/vp/cifar10_ddpmpp_continuous.py",
                      help="config path relative to each checkout")
  parser.add_argument("--small", action="store_true", help="the small reference DDPM++ (see train_step.py)")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--conv_impl", default="xla", choices=("xla", "onednn"))
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--steps", type=int, default=3, help="steps timed per worker per round")
  args = parser.parse_args()

  # One at a time: compiling both at once would only slow both down.
  workers, info = {}, {}
  for name, tree in (("before", args.before), ("after", args.after)):
    workers[name] = start_worker(tree, args)
    info[name] = read_json(workers[name], name)
  times = {name: [] for name in workers}
  try:
    for _ in range(args.rounds):
      for name, worker in workers.items():
        worker.stdin.write(f"{args.steps}\n")
        worker.stdin.flush()
        times[name] += read_json(worker, name)
  finally:
    for worker in workers.values():
      worker.stdin.close()
      worker.wait()
  what = f"{args.config}{' --small' if args.small else ''} batch {args.batch} conv_impl={args.conv_impl}"
  print(what)
  for name in workers:
    t = 1e3 * np.array(times[name])
    print(f"  {name:6s} params {info[name]['params']:,} first loss {info[name]['loss']:.6f}  "
          f"median {np.median(t):.1f} ms  min {t.min():.1f}  max {t.max():.1f}  ({len(t)} steps)")
  ratio = np.median(times["after"]) / np.median(times["before"])
  print(f"  after / before (medians): {ratio:.3f}")


if __name__ == "__main__":
  main()
