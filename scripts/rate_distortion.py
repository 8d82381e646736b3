"""The DDPM paper's rate-distortion curve (Ho et al. 2020, §4.3, fig. 5, table 4) of a VP checkpoint on the
test split: one evaluation of the variational bound per batch (`latents.get_rate_distortion_fn`), averaged
over the split, printed as a table and plotted.

  python scripts/rate_distortion.py --config configs/vp/digits.py --workdir runs/digits_vp \
      --out docs/digits_rate_distortion.png --num_points 20

Rate: the bits/dim sent until x_t (L_N plus the KL terms above t); distortion: the RMSE on [0, 255] of the x0
prediction (eq. 15) from x_t, clipped to the data range as the bound's means are (eval.vlb_clip_denoised, as
the DDPM code's evaluation; unclipped, the prediction from x_N divides by sqrt(abar_N) and leaves the range).
The checkpoint is the newest one (or eval.ckpt_id / eval.pretrained).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A VP config (DDPM chain).", lock_config=True)
flags.DEFINE_string("workdir", None, "The training workdir whose checkpoint is read.")
flags.DEFINE_string("out", None, "Where to write the PNG plot (the numbers go to stdout).")
flags.DEFINE_integer("num_points", 20, "How many steps t the curve has (evenly spaced in 1..N).")
flags.DEFINE_integer("max_batches", 0, "Stop after this many test batches (0: the whole split).")
flags.mark_flags_as_required(["config", "workdir", "out"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from score_sde import config_checks, datasets, latents, parallel, train_state  # pylint: disable=g-import-not-at-top
  from score_sde.models import utils as mutils  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  sde, model = config_checks.validate_config(config)
  steps = np.unique(np.linspace(1, sde.N, FLAGS.num_points).round().astype(int))[::-1]
  step, params = train_state.restore_ema_params(config, FLAGS.workdir, model, parallel.make_mesh())
  score_fn = mutils.get_score_fn(sde, model, continuous=config.training.continuous)
  curve_fn = latents.get_rate_distortion_fn(sde, score_fn, steps, data_centered=config.data.centered,
                                            model_var=config.eval.vlb_model_var,
                                            continuous=config.training.continuous,
                                            clip_denoised=config.eval.vlb_clip_denoised)
  scaler = datasets.get_data_scaler(config)
  start, curves, weights = time.perf_counter(), [], []
  for b, batch in enumerate(datasets.eval_iterator(config, "test", dequantize=False)):
    if FLAGS.max_batches and b >= FLAGS.max_batches:
      break
    real = batch["mask"] > 0
    curves.append(curve_fn(jax.random.fold_in(jax.random.PRNGKey(config.seed), b), params,
                           scaler(batch["image"][real])))
    weights.append(int(real.sum()))
  w = np.asarray(weights, np.float64) / np.sum(weights)
  # The rate is a mean over examples; the distortion an RMSE, so its squares are averaged.
  curve = dict(num_steps=curves[0]["num_steps"], t=curves[0]["t"],
               rate=np.sum([wi * c["rate"] for wi, c in zip(w, curves)], axis=0),
               distortion=np.sqrt(np.sum([wi * c["distortion"] ** 2 for wi, c in zip(w, curves)], axis=0)))
  seconds = time.perf_counter() - start
  print(f"rate-distortion of step {step} on {sum(weights)} test images ({seconds:.0f} s):")
  print("| t | rate (bits/dim) | distortion (RMSE, [0, 255]) |\n| --- | --- | --- |")
  for t, r, d in zip(curve["t"], curve["rate"], curve["distortion"]):
    print(f"| {int(t)} | {r:.4f} | {d:.3f} |")
  latents.plot_rate_distortion(curve, FLAGS.out)
  print(f"plot -> {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
