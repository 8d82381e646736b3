"""Users' own data: IMAGE_FOLDER (a folder of images) and TFRECORDS (TFRecords of encoded images).

Small folders of PIL-written images of several sizes, modes and formats, and small TFRecord files, in tmp
dirs. Decoded images are checked against PIL's conversion followed by an independent centre crop (numpy
slicing) and the 2021 LSUN resize (tf.image.resize bicubic, clipped, truncated to uint8), as
tests/test_datasets.py checks LSUN; split, label, stream (determinism, resume, processes) and error behaviour
through the public `datasets` functions.
"""
import hashlib
import io
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import default_cifar10_configs
from score_sde import data_user_sources, datasets, workdir_config
from tests import stream_utils, train_utils

tf.config.set_visible_devices([], "GPU")


_take, _assert_same_batches, _join = stream_utils.take, stream_utils.assert_same_batches, stream_utils.join


def _config(dataset="IMAGE_FOLDER", size=8, channels=3, **data):
  config = default_cifar10_configs.get_default_configs()
  config.data.dataset, config.data.image_size, config.data.num_channels = dataset, size, channels
  config.data.random_flip = config.data.uniform_dequantization = False
  config.training.batch_size = config.eval.batch_size = 4
  for key, value in data.items():
    config.data[key] = value
  return config


def _eval_all(config, split="train"):
  """Every example of a split, in stored order (the eval stream without its padding)."""
  batches = list(datasets.eval_iterator(config, split))
  keep = np.concatenate([b["mask"] for b in batches]) > 0
  return {k: np.concatenate([b[k] for b in batches])[keep] for k in batches[0] if k != "mask"}


def _encode(array, fmt, mode=None, **options):
  buffer = io.BytesIO()
  image = Image.fromarray(array)
  (image.convert(mode) if mode else image).save(buffer, fmt, **options)
  return buffer.getvalue()


def _oracle(data, size, channels):
  """PIL's decode + convert, the square centre crop by slicing, 2021's bicubic resize truncated to uint8."""
  with Image.open(io.BytesIO(data)) as image:
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB")).reshape(image.size[1], image.size[0], -1)
  h, w = pixels.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  crop = pixels[top:top + side, left:left + side]
  resized = tf.image.resize(crop, [size, size], antialias=True, method="bicubic").numpy()
  return np.floor(np.clip(resized, 0, 255)).astype(np.float32) * np.float32(1 / 255)


def _random_rgba(rng, h, w):
  """Smooth-ish random colours (JPEG-friendly) with a random alpha channel."""
  small = rng.integers(0, 256, (h // 3 + 1, w // 3 + 1, 4), dtype=np.uint8)
  return np.repeat(np.repeat(small, 3, 0), 3, 1)[:h, :w]


# (file name, (height, width), format, PIL mode, save options): every mode / format the decoder converts.
MIXED = [("a_grey.png", (12, 9), "PNG", "L", {}), ("b_grey_alpha.png", (9, 20), "PNG", "LA", {}),
         ("c_palette.png", (17, 17), "PNG", "P", {}), ("d_rgba.png", (8, 8), "PNG", "RGBA", {}),
         ("e_photo.JPG", (21, 14), "JPEG", "RGB", {"quality": 90}), ("f_grey.jpeg", (10, 30), "JPEG", "L", {}),
         ("g_bitmap.bmp", (13, 11), "BMP", "RGB", {}), ("h_anim.gif", (9, 12), "GIF", "P", {}),
         ("i_web.webp", (15, 10), "WEBP", "RGBA", {"lossless": True}), ("j_one_bit.png", (10, 10), "PNG", "1", {})]


def _mixed_folder(root):
  rng = np.random.default_rng(0)
  os.makedirs(root / "nested" / "deeper")
  written = {}
  for i, (name, (h, w), fmt, mode, options) in enumerate(MIXED):
    rel = ("nested/deeper/" if i % 4 == 3 else "nested/" if i % 4 == 2 else "") + name
    written[rel] = _encode(_random_rgba(rng, h, w), fmt, mode, **options)
    (root / rel).write_bytes(written[rel])
  (root / "notes.txt").write_text("not an image")  # other extensions are not images
  (root / ".hidden.png").write_text("an editor's backup")  # hidden files are skipped
  os.makedirs(root / ".cache")
  (root / ".cache" / "x.png").write_text("nor are hidden folders")
  return dict(sorted(written.items()))


# ------------------------------------------------------------------------------------------ IMAGE_FOLDER
@pytest.mark.filterwarnings("ignore:Palette images with Transparency")  # PIL's note on the oracle's P -> RGB
@pytest.mark.parametrize("channels,size", [(3, 8), (1, 8), (3, 16)])
def test_folder_images_decode_as_pil_then_centre_crop_and_resize(tmp_path, channels, size):
  written = _mixed_folder(tmp_path)
  config = _config(size=size, channels=channels, image_folder=str(tmp_path), eval_fraction=0.0)
  assert datasets.num_examples(config, "train") == datasets.num_examples(config, "test") == len(MIXED)
  got = _eval_all(config)
  assert "label" not in got  # images directly in the root: no class folders, no labels
  assert got["image"].shape == (len(MIXED), size, size, channels)
  for image, (rel, data) in zip(got["image"], written.items()):
    np.testing.assert_array_equal(image, _oracle(data, size, channels), err_msg=rel)
  np.testing.assert_array_equal(_eval_all(config, "test")["image"], got["image"])  # fraction 0: train = test


def test_split_folders_give_splits_and_class_labels(tmp_path):
  layout = {"train/cat/1.png": 11, "train/cat/0.png": 10, "train/dog/x/2.png": 12, "test/dog/3.png": 13,
            "test/emu/4.png": 14}
  for rel, level in layout.items():
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_bytes(_encode(np.full((8, 8, 3), level, np.uint8), "PNG"))
  (tmp_path / "train" / "README").write_text("ignored")
  config = _config(image_folder=str(tmp_path))
  train, test = _eval_all(config), _eval_all(config, "test")
  # Sorted by relative path; labels index the sorted class names of both splits (cat, dog, emu).
  np.testing.assert_array_equal(np.round(train["image"][:, 0, 0, 0] * 255), [10, 11, 12])
  np.testing.assert_array_equal(train["label"], [0, 0, 1])
  np.testing.assert_array_equal(np.round(test["image"][:, 0, 0, 0] * 255), [13, 14])
  np.testing.assert_array_equal(test["label"], [1, 2])
  assert datasets.num_examples(config, "validation") == 2  # 'validation' names the held-out split too
  # val/ serves as the held-out folder when there is no test/.
  os.rename(tmp_path / "test", tmp_path / "val")
  assert datasets.num_examples(config, "test") == 2


def test_held_out_part_is_by_hash_of_the_relative_path(tmp_path):
  for i in range(20):
    os.makedirs(tmp_path / f"class{i % 2}", exist_ok=True)
    (tmp_path / f"class{i % 2}" / f"{i:02d}.png").write_bytes(_encode(np.full((8, 8, 3), i, np.uint8), "PNG"))
  rels = sorted(f"class{i % 2}/{i:02d}.png" for i in range(20))
  config = _config(image_folder=str(tmp_path), eval_fraction=0.25)
  want_test = sorted(rels, key=lambda r: hashlib.sha1(r.encode()).hexdigest())[:5]
  train, test = _eval_all(config), _eval_all(config, "test")
  test_ids = (test["image"][:, 0, 0, 0] * 255).round().astype(int)
  train_ids = (train["image"][:, 0, 0, 0] * 255).round().astype(int)
  assert test_ids.tolist() == [int(r[-6:-4]) for r in rels if r in want_test]  # each split in path order
  assert train_ids.tolist() == [int(r[-6:-4]) for r in rels if r not in want_test]
  np.testing.assert_array_equal(train["label"], train_ids % 2)  # class folders: labels in both splits
  # Adding a file moves at most one file of the held-out part.
  (tmp_path / "class0" / "extra.png").write_bytes(_encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
  after = data_user_sources.ImageFolderSource(config, "test").relative_paths
  assert len(after) == 5 and len(set(after) & set(want_test)) >= 4
  # A tiny set still holds one image out; 0 < fraction < 1 is enforced.
  config.data.eval_fraction = 0.01
  assert datasets.num_examples(config, "test") == 1 and datasets.num_examples(config, "train") == 20
  config.data.eval_fraction = 1.0
  with pytest.raises(ValueError, match=r"^data\.eval_fraction=1\.0 must lie in \[0, 1\)"):
    datasets.check_available(config)


def _level_folder(root, count):
  """`count` 8x8 images of grey level 3i (i = 0..count-1): the level names the image even after dequantisation."""
  root.mkdir(exist_ok=True)
  for i in range(count):
    (root / f"{i:03d}.png").write_bytes(_encode(np.full((8, 8), 3 * i, np.uint8), "PNG"))


def _ids(batches):
  return np.concatenate([np.floor(b["image"][:, 0, 0, 0] * 256).astype(int) // 3 for b in batches])


def test_folder_stream_is_seeded_resumable_and_split_over_processes(tmp_path):
  _level_folder(tmp_path, 21)
  config = _config(image_folder=str(tmp_path), eval_fraction=0.0, random_flip=True, uniform_dequantization=True)
  reference = _take(datasets.train_iterator(config), 12)  # 48 positions: epochs 0, 1 and into 2 (21 images)
  _assert_same_batches(_take(datasets.train_iterator(config), 12), reference)  # same seed, same stream
  ids = _ids(reference)
  assert sorted(ids[:21]) == list(range(21)) and sorted(ids[21:42]) == list(range(21))
  assert list(ids[:21]) != list(range(21)) and list(ids[:21]) != list(ids[21:42])  # shuffled, per epoch
  noise = np.concatenate([b["image"] for b in reference]) * 256 - (ids * 3)[:, None, None, None]
  assert 0 <= noise.min() and noise.max() < 1 and noise.std() > 0.2  # dequantised within the level's bin
  for start in (1, 5, 6, 11):  # 5 and 10 straddle the epoch boundaries (21, 42)
    _assert_same_batches(_take(datasets.train_iterator(config, start_step=start), 12 - start), reference[start:])
  halves = [_take(datasets.train_iterator(config, start_step=4, process_index=i, process_count=2), 4)
            for i in range(2)]
  assert halves[0][0]["image"].shape == (2, 8, 8, 3)
  _assert_same_batches(_join(halves), reference[4:8])
  config.seed += 1
  assert list(_ids(_take(datasets.train_iterator(config), 5))[:21]) != list(ids[:21])
  # Eval: stored order, padded with masked zeros, split over processes the same way.
  config.seed -= 1
  evals = list(datasets.eval_iterator(config, "test", dequantize=False))
  assert _ids(evals)[:21].tolist() == list(range(21)) and evals[-1]["mask"].tolist() == [1, 0, 0, 0]
  _assert_same_batches(_join([list(datasets.eval_iterator(config, "test", dequantize=False, process_index=i,
                                                          process_count=2)) for i in range(2)]), evals)


def test_data_digest_names_the_files_not_the_place(tmp_path):
  _level_folder(tmp_path / "a", 3)
  shutil.copytree(tmp_path / "a", tmp_path / "moved")
  config = _config(image_folder=str(tmp_path / "a"), eval_fraction=0.0)
  digest = datasets.data_digest(config)
  config.data.image_folder = str(tmp_path / "moved")
  assert datasets.data_digest(config) == digest
  (tmp_path / "moved" / "new.png").write_bytes((tmp_path / "a" / "000.png").read_bytes())
  assert datasets.data_digest(config) != digest
  assert datasets.data_digest(default_cifar10_configs.get_default_configs()) is None
  # Where the data lives may change between runs of a workdir; how it is split may not.
  stored = workdir_config.as_json(config)
  config.data.image_folder = "/elsewhere"
  assert not workdir_config.differences(stored, config)
  config.data.eval_fraction = 0.5
  assert [d.split()[0] for d in workdir_config.differences(stored, config)] == ["data.eval_fraction"]


# --------------------------------------------------------------------------------------------- TFRECORDS
def _example(features):
  out = {}
  for key, value in features.items():
    if isinstance(value, bytes):
      out[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    else:
      out[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
  return tf.train.Example(features=tf.train.Features(feature=out)).SerializeToString()


def _write(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for features in examples:
      writer.write(_example(features))


def _encoded_examples(count, seed, image_key="image", label_key="label"):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    h, w = rng.integers(6, 20, 2)
    fmt, mode = [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGBA")][i % 4]
    out.append({image_key: _encode(_random_rgba(rng, h, w), fmt, mode), label_key: int(rng.integers(0, 10))})
  return out


def test_tfrecords_decode_labels_splits_and_resume(tmp_path):
  train, test = _encoded_examples(7, 0, "jpg", "cls"), _encoded_examples(3, 1, "jpg", "cls")
  os.makedirs(tmp_path / "train")
  _write(tmp_path / "train" / "part-0.tfrecord", train[:4])
  _write(tmp_path / "train" / "part-1.tfrecord", train[4:])
  (tmp_path / "train" / "meta.json").write_text("{}")  # not a record file
  _write(tmp_path / "held_out.tfrec", test)
  config = _config("TFRECORDS", tfrecords_path=str(tmp_path / "train"), tfrecords_image_key="jpg",
                   tfrecords_label_key="cls", tfrecords_eval_path=str(tmp_path / "held_out.tfrec"))
  assert datasets.num_examples(config, "train") == 7 and datasets.num_examples(config, "test") == 3
  for split, examples in (("train", train), ("test", test)):
    got = _eval_all(config, split)
    np.testing.assert_array_equal(got["label"], [e["cls"] for e in examples])
    for image, example in zip(got["image"], examples):
      np.testing.assert_array_equal(image, _oracle(example["jpg"], 8, 3))
  # Seekable across the file boundary, and split over processes.
  config.data.random_flip = True
  reference = _take(datasets.train_iterator(config), 6)  # 24 positions: 3+ epochs of 7
  assert sorted(np.concatenate([b["label"] for b in reference])[:7]) == sorted(e["cls"] for e in train)
  for start in (1, 2, 5):
    _assert_same_batches(_take(datasets.train_iterator(config, start_step=start), 6 - start), reference[start:])
  halves = [_take(datasets.train_iterator(config, start_step=1, process_index=i, process_count=2), 3)
            for i in range(2)]
  _assert_same_batches(_join(halves), reference[1:4])
  # No eval path: the training records serve eval too; no label key: no labels.
  config.data.tfrecords_eval_path = config.data.tfrecords_label_key = ""
  got = _eval_all(config, "test")
  assert "label" not in got and len(got["image"]) == 7


def test_tfrecords_folder_of_tfds_shards_reads_its_splits(tmp_path):
  _write(tmp_path / "mine-train.tfrecord-00000-of-00002", _encoded_examples(2, 2))
  _write(tmp_path / "mine-train.tfrecord-00001-of-00002", _encoded_examples(3, 3))
  _write(tmp_path / "mine-test.tfrecord-00000-of-00001", _encoded_examples(4, 4))
  (tmp_path / "dataset_info.json").write_text("{}")
  config = _config("TFRECORDS", tfrecords_path=str(tmp_path), tfrecords_label_key="label", channels=1)
  assert datasets.num_examples(config, "train") == 5 and datasets.num_examples(config, "test") == 4
  got = _eval_all(config, "test")
  examples = _encoded_examples(4, 4)
  np.testing.assert_array_equal(got["label"], [e["label"] for e in examples])
  np.testing.assert_array_equal(got["image"][2], _oracle(examples[2]["image"], 8, 1))
  config.data.tfrecords_path = str(tmp_path / "*-train.*")  # a glob
  assert datasets.num_examples(config, "train") == 5


# ------------------------------------------------------------------------------------------------- errors
def _one_line_error(config, match):
  with pytest.raises(ValueError, match=match) as info:
    datasets.check_available(config)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_bad_folders_are_one_line_errors(tmp_path):
  _one_line_error(_config(), r"^data\.image_folder is empty: set --config\.data\.image_folder=DIR")
  _one_line_error(_config(image_folder=str(tmp_path / "nowhere")), r"nowhere' does not exist: set --config")
  (tmp_path / "file.png").write_bytes(_encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
  _one_line_error(_config(image_folder=str(tmp_path / "file.png")), r"is a file, not a folder")
  os.makedirs(tmp_path / "empty" / "sub")
  (tmp_path / "empty" / "notes.txt").write_text("x")
  _one_line_error(_config(image_folder=str(tmp_path / "empty")), r"'\S+empty' holds no images \(\.png, \.jpg")
  os.makedirs(tmp_path / "only_train" / "train")
  _one_line_error(_config(image_folder=str(tmp_path / "only_train")), r"has a train/ folder but no test/, validation/")
  os.makedirs(tmp_path / "only_train" / "test")
  (tmp_path / "only_train" / "train" / "a.png").write_bytes((tmp_path / "file.png").read_bytes())
  _one_line_error(_config(image_folder=str(tmp_path / "only_train")), r"only_train/test' holds no images")
  (tmp_path / "one").mkdir()
  (tmp_path / "one" / "a.png").write_bytes((tmp_path / "file.png").read_bytes())
  _one_line_error(_config(image_folder=str(tmp_path / "one")),
                  r"1 image\(s\) are too few .*--config\.data\.eval_fraction=0 to")
  _one_line_error(_config(image_folder=str(tmp_path / "one"), channels=4), r"^data\.num_channels=4: IMAGE_FOLDER")
  (tmp_path / "one" / "a.png").write_text("<html>a download error page</html>")
  _one_line_error(_config(image_folder=str(tmp_path / "one"), eval_fraction=0.0), r"a\.png is not a readable PNG")


def test_a_damaged_image_mid_stream_is_a_one_line_error_naming_it(tmp_path):
  _level_folder(tmp_path, 6)
  (tmp_path / "004.png").write_bytes(b"GIF? no: a truncated download")
  config = _config(image_folder=str(tmp_path), eval_fraction=0.0)
  with pytest.raises(ValueError, match=r"^reading the data failed: \S+004\.png is not a PNG, JPEG, GIF, WebP or "
                     r"24/32-bit BMP image \(a damaged file among the data's files: replace or remove it\)\.$"):
    list(datasets.eval_iterator(config))


def test_bad_tfrecords_are_one_line_errors(tmp_path):
  _one_line_error(_config("TFRECORDS"), r"^data\.tfrecords_path is empty: set --config\.data\.tfrecords_path")
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path)), r"matches no TFRecord files")
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path / "*.tfrecord")), r"matches no TFRecord files")
  _write(tmp_path / "a.tfrecord", _encoded_examples(2, 0))
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path), tfrecords_image_key="img"),
                  r"a\.tfrecord: its records have no bytes feature 'img' \(they have \['image', 'label'\]\): set "
                  r"--config\.data\.tfrecords_image_key")
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path), tfrecords_label_key="y"),
                  r"no int64 feature 'y' .*: set --config\.data\.tfrecords_label_key")
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path), tfrecords_eval_path=str(tmp_path / "x*")),
                  r"^data\.tfrecords_eval_path='\S+x\*' matches no TFRecord files")
  _write(tmp_path / "b.tfrecord", [])
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path / "b.tfrecord")), r"hold no records")
  with tf.io.TFRecordWriter(str(tmp_path / "c.tfrecord"), options="GZIP") as writer:
    writer.write(_example(_encoded_examples(1, 0)[0]))
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path / "c.tfrecord")),
                  r"c\.tfrecord' is truncated after 0 records \(or is not an uncompressed TFRecord file\)\.$")
  (tmp_path / "e.tfrecord").write_bytes(b"\x05" + b"\0" * 11 + b"bytes" + b"\0" * 4)  # framed, not an Example
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path / "e.tfrecord")),
                  r"e\.tfrecord does not hold uncompressed tf\.train\.Example records")
  _write(tmp_path / "d.tfrecord", [{"image": b"raw pixels, not an encoded image"}])
  _one_line_error(_config("TFRECORDS", tfrecords_path=str(tmp_path / "d.tfrecord")),
                  r"d\.tfrecord: feature 'image' is not a PNG, JPEG")


# ---------------------------------------------------------------------------------------------- end to end
def test_main_trains_on_an_image_folder(tmp_path):
  """`main.py --mode train` on a folder of 40 16x16 RGB PNGs read as grey (the digits TINY model at 8x8, whose
  compiled steps the other TINY runs share; two steps, a checkpoint)."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(40):
    (folder / f"{i:02d}.png").write_bytes(_encode(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "PNG"))
  workdir = tmp_path / "run"
  command = train_utils.train_command(
      str(workdir), "--config.data.dataset=IMAGE_FOLDER", f"--config.data.image_folder={folder}",
      "--config.training.n_iters=2")
  proc = subprocess.run(command, env=train_utils.env_with(1), cwd=train_utils.ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "train_loss" in proc.stderr and train_utils.checkpoint_steps(str(workdir))["checkpoints"] == [2]
  assert workdir_config.stored(str(workdir))["data"]["image_folder"] == str(folder)


def test_each_folder_has_its_own_reference_statistics_file(tmp_path):
  from score_sde import evaluation  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  paths = []
  for name, count in (("a", 3), ("b", 4)):
    (tmp_path / name).mkdir()
    for i in range(count):
      (tmp_path / name / f"{i}.png").write_bytes(_encode(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8), "PNG"))
    config = _config(image_folder=str(tmp_path / name), eval_fraction=0.3)
    config.eval.stats_dir = str(tmp_path / "stats")
    paths.append(evaluation.stats_path(config))
  assert paths[0] != paths[1]
  assert all(os.path.basename(p).startswith("image_folder_") and p.endswith("_8_stats.npz") for p in paths)
  config.eval.stats_path = str(tmp_path / "mine.npz")  # an explicit file wins
  assert evaluation.stats_path(config) == str(tmp_path / "mine.npz")
