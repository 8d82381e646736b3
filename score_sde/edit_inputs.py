"""What `--mode edit` works on: input images (a split of the config's data set, or a folder of PNG files), the
inpainting masks and the class labels of class-conditional sampling. Every problem is a one-line ValueError,
raised before anything is compiled.

Images come back as uint8 (N, H, W, C), H = W = data.image_size and C = data.num_channels: a split's images are
rounded to the nearest uint8 level (they are stored that way, so the saved inputs are exactly what the model is
given); PNG files are converted to grey ('L') or RGB as C asks, centre-cropped to a square and resized to H with
PIL's antialiased bilinear filter (as the data pipelines resize).
"""
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image

from score_sde import datasets, image_utils

SPLITS = ("train", "test")
MASKS = ("right_half", "left_half", "bottom_half", "center", "random")


def describe_input(text):
  """'' -> 'test'; a split name stays; anything else is a folder path."""
  return text or "test"


def png_files(folder):
  """The sorted PNG files of `folder`, local or gs:// (a one-line ValueError if it is missing, not a folder, or
  has none)."""
  where = epath.Path(folder)
  if not where.exists():
    raise ValueError(f"edit.input={folder!r} does not exist: pass a folder of PNG files, or '', 'train', 'test' "
                     "for a split of the config's data set.")
  if not where.is_dir():
    raise ValueError(f"edit.input={folder!r} is a file, not a folder of PNG files.")
  paths = sorted((p for p in where.iterdir() if p.name.lower().endswith(".png") and p.is_file()),
                 key=lambda p: p.name)
  if not paths:
    raise ValueError(f"edit.input={folder!r} holds no .png files.")
  return [str(p) for p in paths]


def folder_digest(paths):
  """A digest of the files' names and bytes: what a folder's rounds depend on."""
  h = hashlib.sha256()
  for path in paths:
    h.update(epath.Path(path).name.encode() + b"\0")
    h.update(hashlib.sha256(epath.Path(path).read_bytes()).digest())
  return h.hexdigest()[:16]


def load_png(path, size, channels):
  """One PNG as uint8 (size, size, channels): converted, centre-cropped to a square, resized."""
  try:
    with epath.Path(path).open("rb") as f, Image.open(f) as image:
      image = image.convert("L" if channels == 1 else "RGB")
      w, h = image.size
      side = min(w, h)
      left, top = (w - side) // 2, (h - side) // 2
      image = image.crop((left, top, left + side, top + side))
      if side != size:
        image = image.resize((size, size), Image.BILINEAR)
      array = np.asarray(image, np.uint8)
  except (OSError, ValueError, SyntaxError) as e:  # PIL reports a broken file as any of these
    raise ValueError(f"edit.input: {path} is not a readable PNG ({type(e).__name__}: {' '.join(str(e).split())})."
                     ) from None
  return array.reshape(size, size, channels)


def read_inputs(config, input_text, num_images):
  """(images uint8 (n, H, W, C), key {name: value} naming them): the first n = min(num_images, available)
  images of the split or folder `input_text` (see `describe_input`)."""
  size, channels = config.data.image_size, config.data.num_channels
  where = describe_input(input_text)
  if where in SPLITS:
    batches = datasets.eval_iterator(config, where, batch_size=min(num_images, 256), dequantize=False)
    out = []
    for batch in batches:
      keep = np.asarray(batch["mask"]) > 0
      out.append(image_utils.to_uint8(np.asarray(batch["image"])[keep], rounding=True))
      if sum(len(x) for x in out) >= num_images:
        break
    return np.concatenate(out)[:num_images], {"edit.input": where}
  paths = png_files(where)
  images = np.stack([load_png(p, size, channels) for p in paths[:num_images]])
  return images, {"edit.input": "png_folder", "edit.input_files": folder_digest(paths)}


def parse_labels(text, num_classes):
  """'' -> [0, ..., num_classes - 1]; '3,7' -> [3, 7]; each label in [0, num_classes)."""
  if not text.strip():
    return list(range(num_classes))
  try:
    labels = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    raise ValueError(f"edit.labels={text!r} must be a comma-separated list of class numbers, e.g. '3,7'.") from None
  bad = [label for label in labels if not 0 <= label < num_classes]
  if not labels or bad:
    raise ValueError(f"edit.labels={text!r}: labels must lie in [0, classifier.num_classes={num_classes})"
                     f"{'; got ' + str(bad) if bad else ''}.")
  return labels


def check_mask(kind, fraction):
  if kind not in MASKS:
    raise ValueError(f"edit.mask={kind!r} is not one of {list(MASKS)}.")
  if kind == "random" and not 0.0 < fraction < 1.0:
    raise ValueError(f"edit.mask_fraction={fraction} must lie in (0, 1) for edit.mask='random'.")


def make_masks(kind, fraction, batch, size, rng):
  """float32 (batch, size, size, 1): 1 where a pixel is known, 0 where it is filled in (`kind` names that part;
  'center' is the central square of half the side, 'random' fills each pixel in with probability `fraction`,
  drawn from `rng`)."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  half, quarter = size // 2, size // 4
  unknown = {"right_half": cols >= half, "left_half": cols < size - half, "bottom_half": rows >= half,
             "center": (rows >= quarter) & (rows < quarter + half) & (cols >= quarter) & (cols < quarter + half)}
  if kind == "random":
    filled = np.asarray(jax.random.uniform(rng, (batch, size, size, 1)) < fraction)
  else:
    filled = np.broadcast_to(unknown[kind][None, :, :, None], (batch, size, size, 1))
  return jnp.asarray(~filled, jnp.float32)
