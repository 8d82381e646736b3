"""Evaluation conventions of the 2021 code: uint8 truncation, bpd passes per split, the likelihood's solver."""
import jax
import ml_collections
import numpy as np
import pytest

from score_sde import evaluate, image_utils, likelihood, sde_lib
from tests import test_likelihood as tl


def test_samples_are_truncated_to_uint8_as_in_2021():
  x = np.array([0.0, 0.6 / 255, 1.0 / 255, 127.9 / 255, 254.99 / 255, 1.0, 1.2, -0.3], np.float32)
  expected = np.clip(x * 255.0, 0, 255).astype(np.uint8)  # the 2021 evaluation's rule, written out
  np.testing.assert_array_equal(image_utils.to_uint8(x), expected)
  np.testing.assert_array_equal(expected, [0, 0, 1, 127, 254, 255, 255, 0])
  np.testing.assert_array_equal(image_utils.to_uint8(x, rounding=True), [0, 1, 1, 128, 255, 255, 255, 0])
  grid = np.arange(256, dtype=np.uint8)  # data on the 8-bit grid comes back exactly under either rule
  for rounding in (False, True):
    np.testing.assert_array_equal(image_utils.to_uint8(grid.astype(np.float32) / 255.0, rounding), grid)


def _eval_config(dataset, repeats):
  return ml_collections.ConfigDict({"eval": {"bpd_dataset": dataset, "bpd_num_repeats": repeats}})


def test_bpd_passes_five_over_test_one_over_train():
  assert evaluate.bpd_passes(_eval_config("test", 5)) == 5
  assert evaluate.bpd_passes(_eval_config("train", 5)) == 1
  with pytest.raises(ValueError, match="eval.bpd_num_repeats=0 must be >= 1"):
    evaluate.bpd_passes(_eval_config("test", 0))
  with pytest.raises(ValueError, match="eval.bpd_dataset='valid' is not 'train' or 'test'"):
    evaluate.bpd_passes(_eval_config("valid", 5))


def test_likelihood_solves_with_the_samplers_rk45_by_default():
  sde = sde_lib.VPSDE(0.1, 20.0, 1000)
  x = tl.to_batch(tl.gaussian_data(4))
  run = lambda **kw: likelihood.get_likelihood_fn(sde, tl.gaussian_score(sde), tl.centred, **kw)(
      jax.random.PRNGKey(0), None, x)
  default, rk45, dopri5 = run(), run(method="rk45"), run(method="dopri5")
  np.testing.assert_array_equal(np.asarray(default[0]), np.asarray(rk45[0]))
  assert int(default[2]) == int(rk45[2]) != int(dopri5[2])
