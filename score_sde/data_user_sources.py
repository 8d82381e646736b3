"""Users' own data as streamed sources: a folder of images (IMAGE_FOLDER) and TFRecords of encoded images
(TFRECORDS), with the `n` / `window` / `read(start)` / `decode(raw)` interface of `score_sde.data_sources`, so
they get the same seekable, per-process streams.

Both decode with `data_preprocessing.decode_user_image` (PNG, JPEG, GIF, WebP, 24/32-bit BMP; any mode,
converted to data.num_channels as PIL's convert('L' / 'RGB') does) and then follow LSUN's 2021 recipe
(`data_preprocessing.lsun_to_size`): the square centre crop resized to data.image_size. Paths may be local or
any filesystem tf.io.gfile reads (gs://...).

IMAGE_FOLDER, `data.image_folder`:
  * splits: when `<folder>/train` exists, it is the train split and the first of `<folder>/test`,
    `<folder>/validation`, `<folder>/val` is the held-out split ('test' and 'validation' both name it). Else
    every image under `<folder>` is used, and `data.eval_fraction` of them (rounded, at least one) are held
    out: the files with the smallest SHA-1 of their relative path (as TensorFlow's image-retraining example
    assigns files to splits), so the choice spreads over subfolders, does not depend on listing order and
    moves few files when files are added. eval_fraction=0 evaluates on the training images.
  * files: every file with an image extension (`EXTENSIONS`, any case) at any depth, hidden files and
    folders (a leading '.') skipped, each split in sorted order of relative path.
  * labels: when every image of both splits lies in a subfolder of its split's root (`<root>/<class>/...`, the
    torchvision / TFDS ImageFolder layout), label = the index of its class folder among the sorted names of
    both splits' class folders; else there are no labels.
TFRECORDS, `data.tfrecords_path` (a file, a glob, or a folder: the files in it whose names hold '.tfrecord'
or end in '.tfrec'), uncompressed tf.train.Example records with the encoded image in the bytes feature
`data.tfrecords_image_key` and, if `data.tfrecords_label_key` is set, an int64 label:
  * splits: `data.tfrecords_eval_path` names the held-out files; "" = the training files serve eval too (as
    for FFHQ / CelebA-HQ). A folder whose file names carry TFDS's split tags (`<name>-train.tfrecord-...`,
    `-test.`, `-validation.`) gives each split its tagged files, so a prepared TFDS folder reads as its splits.
  * records are in file order (sorted names), then stored order.
"""
import hashlib
import posixpath
import re

import numpy as np

from score_sde import settings
from score_sde.data_preprocessing import IMAGE_FORMATS, decode_user_image, lsun_to_size
from score_sde.data_sources import count_records, import_tf, record_window, records_from

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
HELD_OUT_FOLDERS = ("test", "validation", "val")
# Paths are tiny: a window this large is a full shuffle of any folder (a million paths are tens of MB).
FOLDER_WINDOW = 1 << 20
USER_SOURCES = ("IMAGE_FOLDER", "TFRECORDS")


def _is_hidden(name):
  return name.startswith(".")


def list_images(tf, root):
  """Relative paths ('/'-separated) of the images under `root`, at any depth, sorted.

  Its own walk rather than tf.io.gfile.walk: an entry with an image extension is taken as a file without the
  per-entry directory test walk makes (one request per file on gs://).
  """
  out, stack = [], [""]
  while stack:
    rel_dir = stack.pop()
    where = posixpath.join(root, rel_dir) if rel_dir else root
    for entry in tf.io.gfile.listdir(where):
      name = entry.rstrip("/")
      rel = posixpath.join(rel_dir, name) if rel_dir else name
      if not name or _is_hidden(name):
        continue
      if not entry.endswith("/") and name.lower().endswith(EXTENSIONS):
        out.append(rel)
      elif entry.endswith("/") or tf.io.gfile.isdir(posixpath.join(root, rel)):
        stack.append(rel)
  return sorted(out)


def held_out(paths, fraction):
  """The set of `paths` held out for eval: round(fraction * n) of them, at least one, by smallest SHA-1."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"data.eval_fraction={fraction} must lie in [0, 1): the share of images held out for eval "
                     "(0 evaluates on the training images).")
  if fraction == 0.0:
    return set()
  if len(paths) < 2:
    raise ValueError(f"{len(paths)} image(s) are too few to hold out data.eval_fraction={fraction} of them: add "
                     "images, or set --config.data.eval_fraction=0 to evaluate on the training images.")
  count = min(max(int(round(fraction * len(paths))), 1), len(paths) - 1)
  ranked = sorted(paths, key=lambda p: hashlib.sha1(p.encode("utf-8")).hexdigest())
  return set(ranked[:count])


def _folder_roots(tf, folder):
  """{'train': root, 'test': root} of the split folders, or None when `folder` has no `train/`."""
  if not tf.io.gfile.isdir(posixpath.join(folder, "train")):
    if tf.io.gfile.isdir(posixpath.join(folder, "test")):
      raise ValueError(f"data.image_folder={folder!r} has a test/ folder but no train/: add {folder}/train, or "
                       "move the test images out to hold out data.eval_fraction of all images instead.")
    return None
  for name in HELD_OUT_FOLDERS:
    if tf.io.gfile.isdir(posixpath.join(folder, name)):
      return {"train": posixpath.join(folder, "train"), "test": posixpath.join(folder, name)}
  raise ValueError(f"data.image_folder={folder!r} has a train/ folder but no {'/, '.join(HELD_OUT_FOLDERS)}/ "
                   f"for eval: add one (e.g. {folder}/test), or move the images of train/ up into the folder to "
                   "hold out data.eval_fraction of them.")


def folder_splits(tf, folder, fraction):
  """{'train': [(root, relative path, class name or None)], 'test': [...]}: an IMAGE_FOLDER's splits (see the
  module docstring)."""
  if not folder:
    raise ValueError("data.image_folder is empty: set --config.data.image_folder=DIR, a folder of images "
                     f"({IMAGE_FORMATS}; or DIR/train and DIR/test).")
  if not tf.io.gfile.isdir(folder):
    what = "is a file, not a folder" if tf.io.gfile.exists(folder) else "does not exist"
    raise ValueError(f"data.image_folder={folder!r} {what}: set --config.data.image_folder to a folder of images.")
  roots = _folder_roots(tf, folder) or {"train": folder, "test": folder}
  listed = {root: list_images(tf, root) for root in set(roots.values())}
  rels = {split: listed[root] for split, root in roots.items()}
  for split, found in rels.items():
    if not found:
      raise ValueError(f"data.image_folder: {roots[split]!r} holds no images ({', '.join(EXTENSIONS)} files): "
                       "add images, or point --config.data.image_folder at the folder that holds them.")
  if roots["train"] == roots["test"]:
    test = held_out(rels["train"], fraction)
    if test:
      rels = {"train": [r for r in rels["train"] if r not in test], "test": [r for r in rels["train"] if r in test]}
  labelled = all("/" in rel for found in rels.values() for rel in found)
  return {split: [(roots[split], rel, rel.split("/")[0] if labelled else None) for rel in found]
          for split, found in rels.items()}


def _split(split):
  if split not in ("train", "test", "validation"):
    raise ValueError(f"split={split!r} is not one of ['train', 'test', 'validation'].")
  return "train" if split == "train" else "test"


class ImageFolderSource:
  """One split of a folder of images: raw examples are file paths, read and decoded in `decode`."""

  def __init__(self, config, split):
    self.tf = tf = import_tf()
    data = settings.DataSettings.from_config(config)
    self.size, self.channels = data.image_size, data.num_channels
    splits = folder_splits(tf, data.image_folder, data.eval_fraction)
    items = splits[_split(split)]
    self.relative_paths = [rel for _, rel, _ in items]
    self.paths = [posixpath.join(root, rel) for root, rel, _ in items]
    self.has_label = items[0][2] is not None
    self.class_names = sorted({c for found in splits.values() for _, _, c in found}) if self.has_label else []
    index = {name: i for i, name in enumerate(self.class_names)}
    self.labels = np.array([index[c] for _, _, c in items] if self.has_label else [], np.int32)
    self.n = len(self.paths)
    self.window = min(self.n, FOLDER_WINDOW)
    self._check_first()

  def _check_first(self):
    """Decodes the first image eagerly, so that a folder of unreadable files fails here in one line."""
    tf, first = self.tf, self.paths[0]
    try:
      decode_user_image(tf, tf.io.read_file(first), self.channels, tf.constant(first))
    except tf.errors.OpError:
      raise ValueError(f"data.image_folder: {first} is not a readable {IMAGE_FORMATS} image: replace or remove "
                       "it.") from None

  def read(self, start):
    """Raw examples {'path'[, 'label']} from index `start` on, in sorted order."""
    columns = {"path": self.paths[start:]}
    if self.has_label:
      columns["label"] = self.labels[start:]
    return self.tf.data.Dataset.from_tensor_slices(columns)

  def decode(self, raw):
    tf = self.tf
    image = decode_user_image(tf, tf.io.read_file(raw["path"]), self.channels, raw["path"])
    out = {"image": lsun_to_size(tf, image, self.size)}
    if self.has_label:
      out["label"] = raw["label"]
    return out


# -------------------------------------------------------------------------------------------- TFRecords
_SPLIT_TAG = re.compile(r"-(train|test|validation)\.tfrecord")


def _is_record_file(name):
  return not _is_hidden(name) and (".tfrecord" in name or name.endswith(".tfrec"))


def record_files(tf, path, split, key):
  """The sorted record files of `path` (file, glob or folder; see the module docstring) for `split`."""
  if not path:
    raise ValueError(f"data.{key} is empty: set --config.data.{key} to a TFRecord file, a glob or a folder of "
                     "*.tfrecord* files.")
  if tf.io.gfile.isdir(path):
    files = sorted(posixpath.join(path, n.rstrip("/")) for n in tf.io.gfile.listdir(path) if _is_record_file(n))
    tags = [_SPLIT_TAG.search(posixpath.basename(f)) for f in files]
    if any(tags):  # TFDS shards: each split its own files
      by_split = {}
      for f, tag in zip(files, tags):
        if tag:
          by_split.setdefault(tag.group(1), []).append(f)
      want = ["train"] if split == "train" else ["test", "validation"]
      files = next((by_split[s] for s in want if s in by_split), [])
      if not files:
        raise ValueError(f"data.{key}={path!r} holds TFRecords of the splits {sorted(by_split)} but none of "
                         f"{want}: name the files to read with a glob (--config.data.{key}='DIR/*-train.*').")
  else:
    files = sorted(tf.io.gfile.glob(path))
  if not files:
    raise ValueError(f"data.{key}={path!r} matches no TFRecord files (a file, a glob, or a folder of files named "
                     "*.tfrecord*): set --config.data." + key + " to where they are.")
  return files


class EncodedTFRecordSource:
  """One split of TFRecords of encoded images (tf.train.Example), read in file order."""

  def __init__(self, config, split):
    self.tf = tf = import_tf()
    data = settings.DataSettings.from_config(config)
    self.size, self.channels = data.image_size, data.num_channels
    self.image_key, self.label_key = data.tfrecords_image_key, data.tfrecords_label_key
    key = "tfrecords_eval_path" if _split(split) == "test" and data.tfrecords_eval_path else "tfrecords_path"
    self.key, self.files = key, record_files(tf, getattr(data, key), _split(split), key)
    self.counts = [count_records(f) for f in self.files]
    self.n = sum(self.counts)
    if self.n == 0:
      raise ValueError(f"data.{key}={getattr(data, key)!r}: its TFRecord files hold no records.")
    self.has_label = bool(self.label_key)
    self._starts = np.concatenate([[0], np.cumsum(self.counts)]).tolist()
    self.window = record_window(self.n, sum(tf.io.gfile.stat(f).length for f in self.files))
    self._check_first()

  def _check_first(self):
    """Parses and decodes the first record eagerly: records of another kind fail here, in one line."""
    tf = self.tf
    first = next(f for f, count in zip(self.files, self.counts) if count)
    try:
      raw = next(iter(tf.data.TFRecordDataset([first]).take(1))).numpy()
      features = tf.train.Example.FromString(raw).features.feature
    except Exception:  # pylint: disable=broad-except  (DataLossError, protobuf's DecodeError, ...)
      raise ValueError(f"{first} does not hold uncompressed tf.train.Example records.") from None
    if self.image_key not in features or not features[self.image_key].bytes_list.value:
      raise ValueError(f"{first}: its records have no bytes feature {self.image_key!r} (they have "
                       f"{sorted(features)}): set --config.data.tfrecords_image_key to the one holding the encoded "
                       "images.")
    label = features[self.label_key].int64_list.value if self.label_key in features else []
    if self.has_label and len(label) != 1:
      raise ValueError(f"{first}: its records have no int64 feature {self.label_key!r} (they have "
                       f"{sorted(features)}): set --config.data.tfrecords_label_key to the label's, or '' for none.")
    encoded = features[self.image_key].bytes_list.value[0]
    try:
      decode_user_image(tf, tf.constant(encoded), self.channels, tf.constant(first))
    except tf.errors.OpError:
      raise ValueError(f"{first}: feature {self.image_key!r} is not a {IMAGE_FORMATS} image.") from None

  def read(self, start):
    """Raw records from index `start` on: whole files before it are never opened."""
    return records_from(self.tf, self.files, self._starts, start)

  def decode(self, raw):
    tf = self.tf
    spec = {self.image_key: tf.io.FixedLenFeature([], tf.string)}
    if self.has_label:
      spec[self.label_key] = tf.io.FixedLenFeature([], tf.int64)
    ex = tf.io.parse_single_example(raw["record"], spec)
    image = decode_user_image(tf, ex[self.image_key], self.channels, tf.constant(f"a record of data.{self.key}"))
    out = {"image": lsun_to_size(tf, image, self.size)}
    if self.has_label:
      out["label"] = tf.cast(ex[self.label_key], tf.int32)
    return out


def make_user_source(config, split):
  """The source of a user's data set (`USER_SOURCES`) for `split`."""
  if config.data.dataset == "IMAGE_FOLDER":
    return ImageFolderSource(config, split)
  return EncodedTFRecordSource(config, split)


def data_digest(config):
  """A short digest of the train split's identity (its file names; TFRECORDS: with their record counts), e.g. to
  name the reference statistics of one user's data apart from another's."""
  src = make_user_source(config, "train")
  if isinstance(src, ImageFolderSource):
    parts = src.relative_paths
  else:
    parts = [f"{posixpath.basename(f)}\0{count}" for f, count in zip(src.files, src.counts)]
  return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]
