"""Turning samples into files a person can look at: uint8 conversion and PNG grids."""
import math

import numpy as np
from PIL import Image


def to_uint8(images, rounding=False):
  """[0, 1] floats -> uint8 by the 2021 code's rule, clip(255 x, 0, 255) truncated to an integer: what its
  evaluation fed Inception and its snapshots saved. Grey level k then covers [k/255, (k+1)/255), so samples
  sit half a level darker than under rounding (FID moves with it); data already on the grid (k / 255 in
  float32) maps back to k exactly either way. rounding=True takes the nearest level instead, as image
  writers do (config.eval.uint8_rounding; not the paper's procedure)."""
  scaled = np.clip(np.asarray(images, np.float32) * 255.0 + (0.5 if rounding else 0.0), 0, 255)
  return scaled.astype(np.uint8)


def make_grid(images, nrow=None, padding=2, pad_value=255):
  """(B, H, W, C) uint8 -> one (rows*(H+p)+p, nrow*(W+p)+p, C) uint8 image."""
  images = np.asarray(images)
  b, h, w, c = images.shape
  nrow = nrow or int(math.ceil(math.sqrt(b)))
  rows = int(math.ceil(b / nrow))
  grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
  for k in range(b):
    r, col = divmod(k, nrow)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = images[k]
  return grid


def save_grid(images, path, nrow=None, scale=1):
  """Writes a PNG grid of uint8 images to a path or open file; `scale` enlarges small images for viewing."""
  grid = make_grid(images, nrow)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  image = Image.fromarray(grid)
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
  image.save(path, format="PNG")


def save_rows(rows, path, scale=1):
  """Writes rows of uint8 images (lists of (H, W, C) arrays, ragged rows padded with white) as one PNG grid."""
  width = max(len(row) for row in rows)
  blank = np.full_like(rows[0][0], 255)
  tiles = np.stack([x for row in rows for x in list(row) + [blank] * (width - len(row))])
  save_grid(tiles, path, nrow=width, scale=scale)
