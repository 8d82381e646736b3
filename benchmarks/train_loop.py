"""Wall time per step of the real training loop (`train.train`) next to the compiled step alone.

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
    python benchmarks/train_loop.py --config configs/vp/digits.py --steps 300 --log_freq 25

The loop writes `wall_ms_per_step` at every log (wall time between two consecutive log-time host syncs over
the steps in between, the first interval, which includes compilation, left out). Eval, checkpoints and
snapshot sampling are pushed past the end of the run (one checkpoint is written at the last step, after the
last log) so what is measured is input + dispatch + compute. The target: within 5% of the compiled step.
"""
import argparse
import tempfile

import numpy as np

import train_step as bench  # benchmarks/train_step.py


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/vp/digits.py")
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--log_freq", type=int, default=25)
  parser.add_argument("--n_jitted_steps", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()

  config = bench.benchmark_config(args.config, args.small, args.batch)
  t = config.training
  if args.n_jitted_steps:
    t.n_jitted_steps = args.n_jitted_steps
  never = args.steps * 10 * t.n_jitted_steps
  t.update(n_iters=args.steps, log_freq=args.log_freq, eval_freq=never, snapshot_freq=never,
           snapshot_freq_for_preemption=never, snapshot_sampling=False)

  from score_sde import train  # pylint: disable=g-import-not-at-top
  # The step alone is timed before and after the loop: this VM's speed drifts by ~10% over minutes.
  before, _, _, _ = bench.time_step(config, args.repeats)
  with tempfile.TemporaryDirectory() as workdir:
    train.train(config, workdir)
    loop_ms = np.array([v for _, v in sorted(train.logged_scalars(workdir, "wall_ms_per_step").items())])
  after, _, _, _ = bench.time_step(config, args.repeats)
  step_ms = 1e3 * np.concatenate([before, after])
  loop_med, step_med = float(np.median(loop_ms)), float(np.median(step_ms))
  print(f"config={args.config}{' (small)' if args.small else ''} batch={t.batch_size} "
        f"n_jitted_steps={t.n_jitted_steps} steps={args.steps} log_freq={args.log_freq}")
  print(f"training loop: median {loop_med:.1f} ms/step (min {loop_ms.min():.1f}, max {loop_ms.max():.1f}, "
        f"{len(loop_ms)} log intervals)")
  print(f"compiled step alone: median {step_med:.1f} ms (min {step_ms.min():.1f}, max {step_ms.max():.1f}, "
        f"n={len(step_ms)}; medians before / after the loop {1e3 * np.median(before):.1f} / "
        f"{1e3 * np.median(after):.1f})")
  print(f"loop / step: {loop_med / step_med:.3f} (target <= 1.05)")


if __name__ == "__main__":
  main()
