"""`--mode edit`: the controllable-generation and latent tools on real images from a checkpoint, in resumable
rounds, with one tiny model trained once for the module."""
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

import jax

from configs import default_cifar10_configs
from configs.ve import digits as ve_digits
from configs.vp import digits
from score_sde import (checkpointing, classifier_training, datasets, edit, image_utils, run_lib, sde_lib, settings,
                       train)
from tests import score_oracles

pytestmark = pytest.mark.xdist_group("edit")  # its tests share the trained model


def tiny_config(module=digits, **edit_settings):
  config = module.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=25)
  config.training.update(batch_size=4, n_iters=2, log_freq=2, eval_freq=1000, snapshot_freq=2,
                         snapshot_freq_for_preemption=2, snapshot_sampling=False)
  config.eval.batch_size = 64  # the classifier's accuracy pass over the test split: 5 batches
  config.classifier.update(blocks_per_group=1, channel_multiplier=1, embedding_size=16, batch_size=16, n_iters=5,
                           log_freq=5, eval_freq=5, snapshot_freq=5, noise_buckets=1)
  config.edit.update(num_images=6, batch_size=4, num_interpolations=3, num_records=4)
  config.edit.update(**edit_settings)
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("edit_workdir"))
  train.train(tiny_config(), path)
  return path


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
  """Five PNGs of other sizes and modes; `b_wide.png`'s centre square is one colour."""
  folder = tmp_path_factory.mktemp("pngs")
  rng = np.random.default_rng(0)
  wide = np.zeros((16, 24, 3), np.uint8)
  wide[:, 4:20] = (0, 128, 0)  # grey level round(0.587 * 128) = 75 after conversion to 'L'
  Image.fromarray(wide).save(folder / "b_wide.png")
  Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "a_grey.png")
  Image.fromarray(rng.integers(0, 256, (12, 12, 4), dtype=np.uint8), "RGBA").save(folder / "c_rgba.png")
  for name in ("d.png", "e.PNG"):
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / name)
  (folder / "notes.txt").write_text("not an image")
  return str(folder)


def _rounds(folder, n):
  return [dict(np.load(folder / f"round_{r}.npz")) for r in range(n)]


def _all(rounds, key):
  return np.concatenate([r[key] for r in rounds])


def test_tasks_on_the_test_split_and_a_png_folder(workdir, png_folder):
  folder = edit.edit(tiny_config(task="inpaint"), workdir)
  assert folder.name.startswith("inpaint-") and folder.parent.name == "step_2" and folder.parent.parent.name == "edit"
  rounds = _rounds(folder, 2)
  assert [len(r["outputs"]) for r in rounds] == [4, 2] and not (folder / "round_2.npz").exists()
  assert all(v.dtype == np.uint8 for r in rounds for v in r.values()) and (folder / "round_1.png").exists()
  inputs, masks, outputs = (_all(rounds, k) for k in ("inputs", "masks", "outputs"))
  test_split = next(datasets.eval_iterator(tiny_config(), "test", batch_size=6, dequantize=False))["image"]
  np.testing.assert_array_equal(inputs, image_utils.to_uint8(test_split, rounding=True))
  assert masks.shape == (6, 8, 8, 1) and np.all(masks[:, :, :4] == 1) and np.all(masks[:, :, 4:] == 0)
  known = np.broadcast_to(masks == 1, inputs.shape)
  np.testing.assert_array_equal(outputs[known], inputs[known])  # the known pixels come back exactly
  assert np.any(outputs[~known] != inputs[~known])
  key = json.loads((folder / "key.json").read_text())
  assert key["edit.mask"] == "right_half" and key["edit.input"] == "test" and "sampling.predictor" in key
  assert not any(k.startswith("classifier.") or k == "edit.num_images" for k in key)

  png = _rounds(edit.edit(tiny_config(task="inpaint", input=png_folder), workdir), 2)
  images = _all(png, "inputs")
  assert images.shape == (5, 8, 8, 1)  # the five .png files, sorted, each grey, cropped and resized
  np.testing.assert_array_equal(images[0, ..., 0], np.asarray(Image.open(os.path.join(png_folder, "a_grey.png"))))
  np.testing.assert_array_equal(images[1], 75)
  known = np.broadcast_to(_all(png, "masks") == 1, images.shape)
  np.testing.assert_array_equal(_all(png, "outputs")[known], images[known])

  # encode: decode(encode(x)) returns the input to the solver's tolerance (a few uint8 levels at most).
  enc = _rounds(edit.edit(tiny_config(task="encode"), workdir), 2)
  np.testing.assert_array_equal(_all(enc, "inputs"), inputs)
  trip = _all(enc, "outputs")
  assert np.max(np.abs(trip.astype(int) - inputs)) <= 1  # measured: 0 (rk45, rtol = atol = 1e-5)
  assert enc[0]["latents"].dtype == np.float32 and enc[0]["latents"].shape == (4, 8, 8, 1)
  assert np.all(np.isfinite(enc[0]["latents"]))
  png_trip = _rounds(edit.edit(tiny_config(task="encode", input=png_folder), workdir), 2)
  assert np.max(np.abs(_all(png_trip, "outputs").astype(int) - images)) <= 1

  # interpolate: image i with image i + 1 of its round; the ends of each path are the round trips.
  interp = _rounds(edit.edit(tiny_config(task="interpolate"), workdir), 2)
  np.testing.assert_array_equal(interp[0]["pairs"], [[0, 1], [1, 2], [2, 3], [3, 0]])
  np.testing.assert_array_equal(interp[1]["pairs"], [[4, 5], [5, 4]])
  paths = _all(interp, "outputs")
  assert paths.shape == (6, 3, 8, 8, 1)
  np.testing.assert_array_equal(paths[:, 0], trip)  # the same batch decoded from the same latents
  partners = np.concatenate([r["pairs"][:, 1] for r in interp])
  # The partner's end decodes a permuted batch, one ODE whose error norm sums in another order (measured: 0).
  assert np.max(np.abs(paths[:, -1].astype(int) - trip[partners])) <= 1
  assert np.any(paths[:, 1] != paths[:, 0])

  prog = _rounds(edit.edit(tiny_config(task="progressive"), workdir), 2)
  assert prog[0]["outputs"].shape == (4, 4, 8, 8, 1) and prog[1]["outputs"].shape == (2, 4, 8, 8, 1)
  assert prog[0]["chain"].shape == (4, 5, 8, 8, 1)
  np.testing.assert_array_equal(prog[0]["outputs"][:, -1], prog[0]["chain"][:, -1])  # last prediction = sample


def test_rounds_resume_and_other_settings_write_elsewhere(workdir, capsys):
  folder = edit.edit(tiny_config(task="inpaint"), workdir)
  before = _rounds(folder, 2)
  os.remove(folder / "round_1.npz")
  mtime = os.path.getmtime(folder / "round_0.npz")
  assert edit.edit(tiny_config(task="inpaint"), workdir) == folder
  after = _rounds(folder, 2)
  for key in ("inputs", "masks", "outputs"):
    np.testing.assert_array_equal(after[1][key], before[1][key])  # redrawn identically
  assert os.path.getmtime(folder / "round_0.npz") == mtime  # the finished round is untouched
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith("edit inpaint: 6 input images from step 2 in 2 rounds (1 already done) -> ") and \
      str(folder) in line
  center = edit.edit(tiny_config(task="inpaint", mask="center"), workdir)
  random = edit.edit(tiny_config(task="inpaint", mask="random", mask_fraction=0.3), workdir)
  assert len({folder, center, random}) == 3 and center.parent == random.parent == folder.parent
  masks = np.load(center / "round_0.npz")["masks"]
  assert masks[0, :, :, 0].tolist() == [[0 if 2 <= i < 6 and 2 <= j < 6 else 1 for j in range(8)] for i in range(8)]
  random_masks = np.load(random / "round_0.npz")["masks"]
  assert 0.05 < 1 - random_masks.mean() < 0.6 and np.any(random_masks[0] != random_masks[1])


def test_conditional_rows_per_label_with_a_tiny_classifier(workdir):
  config = tiny_config(task="conditional", labels="0,1", num_images=4)
  with pytest.raises(checkpointing.CheckpointError, match="no classifier in .*--mode train_classifier"):
    edit.edit(config, workdir)
  classifier_training.train_classifier(config, workdir)
  folder = edit.edit(config, workdir)
  done = np.load(folder / "round_0.npz")
  assert done["labels"].tolist() == [0, 1, 0, 1] and done["outputs"].shape == (4, 8, 8, 1)
  grid = Image.open(folder / "round_0.png")
  assert grid.size == (4 * (2 * 10 + 2), 4 * (2 * 10 + 2))  # two rows (labels) of two samples, 4x enlarged
  key = json.loads((folder / "key.json").read_text())
  assert key["edit.labels"] == [0, 1] and key["classifier.params"] and "classifier.n_iters" not in key


@pytest.mark.parametrize("settings, message", [
    (dict(task="paint"), r"^edit.task='paint' is not one of \['inpaint', 'colorize', "),
    (dict(num_images=0), r"^edit.num_images=0 and edit.batch_size=8 must be >= 1\.$"),
    (dict(task="colorize"), r"^edit.task='colorize' needs colour images; data.num_channels=1\.$"),
    (dict(task="conditional", labels="3,12"), r"labels must lie in \[0, classifier.num_classes=10\); got \[12\]"),
    (dict(task="conditional", labels="3,x"), r"must be a comma-separated list"),
    (dict(mask="top"), r"^edit.mask='top' is not one of"),
    (dict(mask="random", mask_fraction=1.5), r"edit.mask_fraction=1.5 must lie in \(0, 1\)"),
    (dict(input="MISSING"), r"does not exist: pass a folder of PNG files"),
    (dict(input="EMPTY"), r"holds no .png files"),
    (dict(input="BROKEN"), r"broken.png is not a readable PNG"),
    (dict(task="interpolate", num_interpolations=1), r"num_interpolations=1 must be >= 2"),
    (dict(task="progressive", num_records=26), r"num_records=26 must lie in \[1, N=25\]"),
])
def test_bad_input_fails_in_one_line_before_anything_runs(tmp_path, settings, message):
  inputs = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty", "BROKEN": tmp_path / "broken"}
  (tmp_path / "empty").mkdir()
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  if settings.get("input") in inputs:
    settings = dict(settings, input=str(inputs[settings["input"]]))
  workdir = tmp_path / "workdir"
  config = tiny_config(**settings)
  config.edit.batch_size = 8
  with pytest.raises(ValueError, match=message) as info:
    run_lib.run("edit", config, str(workdir))
  assert "\n" not in str(info.value)
  assert not workdir.exists()  # refused before a checkpoint was looked for


def test_every_edit_setting_is_in_the_default_configs_with_its_default():
  section = default_cifar10_configs.get_default_configs().edit
  fields = dataclasses.fields(settings.EditSettings)
  assert sorted(section.keys()) == sorted(f.name for f in fields)
  assert all(section[f.name] == f.default for f in fields)
  assert settings.EditSettings.from_config({}) == settings.EditSettings()  # a config without the section


def test_progressive_needs_the_ddpm_chain(tmp_path):
  with pytest.raises(ValueError, match=r"^edit.task='progressive' follows the DDPM chain .*'vesde' has none\.$"):
    edit.edit(tiny_config(ve_digits, task="progressive"), str(tmp_path))


class _ColourTask:
  """What the colorize builder reads of a task, with the exact score of Gaussian data (3-channel digits do not
  exist, so there is no 3-channel checkpoint to run `edit.edit` on here)."""
  sde = sde_lib.VPSDE(0.1, 20.0, 25)
  shape = (3, 4, 4, 3)
  score_fn = staticmethod(score_oracles.gaussian_score(sde, 0.0, 0.2))
  scaler = staticmethod(lambda x: 2.0 * x - 1.0)
  inverse = staticmethod(lambda x: (x + 1.0) / 2.0)

  def built(self, name, build, *extra):
    del name, extra
    return build()

  def put(self, x):
    return jax.numpy.asarray(x)

  def pc_args(self):
    return dict(predictor="euler_maruyama", corrector="none", inverse_scaler=self.inverse, snr=0.16, n_steps=1,
                probability_flow=False, denoise=True, eps=1e-3)


def test_colorize_keeps_each_pixels_grey_level():
  images = np.random.default_rng(1).integers(60, 200, (2, 4, 4, 3), dtype=np.uint8)  # 2 of a round of 3
  run = edit._colorize(_ColourTask())  # pylint: disable=protected-access
  arrays, rows = run(jax.random.PRNGKey(0), None, images, 0)
  grey = np.round(images.mean(axis=-1, keepdims=True)).astype(np.uint8)
  np.testing.assert_array_equal(arrays["grey"], grey)
  out = arrays["outputs"].astype(float)
  assert out.shape == (2, 4, 4, 3) and np.all(np.isclose(out.mean(axis=-1, keepdims=True), grey, atol=1.0)
                                              | np.any((out == 0) | (out == 255), axis=-1, keepdims=True))
  assert np.std(out - out.mean(axis=-1, keepdims=True)) > 1.0  # coloured, not grey
  assert [len(row) for row in rows] == [3, 3] and rows[0][1].shape == (4, 4, 3)
