"""Deterministic image preprocessing of the streamed sources (TensorFlow): decoding users' images to a channel
count, centre crops, resizes, LSUN's 2021 recipe.

Every function takes the `tensorflow` module as its first argument, so importing this module imports no TF.
"""

# PIL's RGB -> L weights (ITU-R 601-2 luma, 0.299 R + 0.587 G + 0.114 B) in its 16-bit fixed point, rounded:
# Pillow, src/libImaging/Convert.c, L24. Grey images of users' data are what `Image.convert('L')` makes.
LUMA_16 = (19595, 38470, 7471)

# Leading bytes of the formats `decode_user_image` reads (TF's decoders; BMP only at 24 / 32 bits per pixel, as
# TF reads the palette index of 1- to 8-bit BMPs as grey and refuses 16-bit ones).
IMAGE_FORMATS = "PNG, JPEG, GIF, WebP or 24/32-bit BMP"


def _is_known_format(tf, contents):
  head = tf.strings.join([tf.strings.substr(contents, 0, 30), b"\0" * 30])  # padded: short files fail below
  starts = lambda prefix: tf.equal(tf.strings.substr(head, 0, len(prefix)), prefix)
  bmp_bits = tf.io.decode_raw(tf.strings.substr(head, 28, 1), tf.uint8)[0]  # biBitCount's low byte
  bmp = tf.logical_and(starts(b"BM"), bmp_bits >= 24)
  webp = tf.logical_and(starts(b"RIFF"), tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
  return tf.reduce_any(tf.stack([starts(b"\x89PNG\r\n\x1a\n"), tf.io.is_jpeg(contents), starts(b"GIF8"), bmp,
                                 webp]))


def decode_user_image(tf, contents, channels, name):
  """Encoded image bytes -> uint8 (H, W, channels), channels 1 (grey) or 3 (RGB), as PIL converts.

  Any mode is accepted: alpha is dropped (as PIL's convert('RGB') / convert('L') drop it, no compositing),
  grey is repeated to RGB, RGB becomes grey by PIL's fixed-point luma (`LUMA_16`); palette images arrive
  expanded by the decoders. JPEGs are decoded with the accurate integer IDCT (libjpeg's ISLOW, PIL's default)
  rather than TF's default fast one, so pixels equal PIL's. 16-bit PNGs keep their high byte (TF's reduction;
  PIL's convert would clip instead). `name` (a string tensor saying where the bytes came from) is named in the
  error of bytes that are none of `IMAGE_FORMATS`.
  """
  if channels not in (1, 3):
    raise ValueError(f"data.num_channels={channels}: images are read as grey (1) or RGB (3).")
  check = tf.debugging.Assert(_is_known_format(tf, contents), [name, f"is not a {IMAGE_FORMATS} image"])
  with tf.control_dependencies([check]):
    contents = tf.identity(contents)
  image = tf.cond(tf.io.is_jpeg(contents),
                  lambda: tf.io.decode_jpeg(contents, channels=0, dct_method="INTEGER_ACCURATE"),
                  lambda: tf.io.decode_image(contents, channels=0, expand_animations=False))
  have = tf.shape(image)[-1]
  image = tf.cond(tf.equal(have % 2, 0), lambda: image[..., :have - 1], lambda: image)  # LA -> L, RGBA -> RGB
  is_rgb = tf.equal(tf.shape(image)[-1], 3)
  if channels == 1:
    def luma():
      rgb = tf.cast(image, tf.int32)
      weighted = tf.tensordot(rgb, tf.constant(LUMA_16, tf.int32), axes=[[2], [0]]) + (1 << 15)
      return tf.cast(tf.bitwise.right_shift(weighted, 16), tf.uint8)[..., None]
    image = tf.cond(is_rgb, luma, lambda: image)
  else:
    image = tf.cond(is_rgb, lambda: image, lambda: tf.tile(image, [1, 1, 3]))
  return tf.ensure_shape(image, [None, None, channels])


def tf_to_size(tf, image, crop, size):
  """uint8 HWC -> float32 (size, size, C) in [0, 1]: optional centre crop, then antialiased resize."""
  image = tf.cast(image, tf.float32) / 255.0
  channels = image.shape[-1]
  if crop is not None:
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1]) if crop == "square" else crop
    image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  image = tf.cond(same, lambda: image,
                  lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True))
  image = tf.clip_by_value(image, 0.0, 1.0)  # resampling can round a hair past the ends
  return tf.ensure_shape(image, [size, size, channels])


LSUN_SMALL_SIDE_SIZE = 128  # the one image_size at which the Score SDE code resizes LSUN's shorter side


def lsun_to_size(tf, image, size):
  """uint8 HWC LSUN image -> float32 (size, size, C) in [0, 1], as the Score SDE code (2021) preprocesses LSUN.

  C is the image's static channel count (3 for LSUN; users' images, which follow the same recipe, may be grey).

  yang-song/score_sde, datasets.py, `get_dataset` for 'LSUN':
    * size 128: `convert_image_dtype` to float, `resize_small` (the shorter side to `size`, the other to
      round(side * size / shorter) rounded half to even as `tf.round` does; `tf.image.resize` with
      antialias=True and its default bilinear method), then `central_crop` (top = (H - size) // 2, left =
      (W - size) // 2);
    * any other size: `crop_resize` on the uint8 image (the square centre crop of side min(H, W), from
      (H - side) // 2, (W - side) // 2; `tf.image.resize(..., antialias=True, method=BICUBIC)`, which works in
      float32 pixel units 0..255; `tf.cast(image, tf.uint8)`, truncating toward zero), then
      `convert_image_dtype` to float32 (x * (1 / 255)).
  Two departures, both where 2021's result is not defined by its code:
    * bicubic resampling overshoots near edges, below 0 and above 255. `tf.cast` of such floats to uint8 is
      undefined behaviour in C++ and TF is inconsistent about it: on CPU (TF 2.21) elements cast in
      vectorised blocks of 32 saturate to 0 / 255 while the remaining tail elements wrap modulo 256 (-1.5 ->
      255, 256.5 -> 0). We clip to [0, 255] before the truncating cast, i.e. saturate everywhere, which is
      what every block-aligned image (H W 3 a multiple of 32, e.g. 256 x 256 or 64 x 64) gets from TF;
    * 2021's `resize_small` / `central_crop` read static shapes and pass tf.int32 as `tf.round`'s `name`, so
      inside a tf.data map (unknown image shape) they raise; we compute the same sizes and offsets from the
      dynamic shape. The float result is clipped to [0, 1] (bilinear weights are positive and sum to one,
      so this moves a value by at most a rounding error).
  """
  shape = tf.shape(image)
  h, w, channels = shape[0], shape[1], image.shape[-1]
  if size == LSUN_SMALL_SIDE_SIZE:
    image = tf.image.convert_image_dtype(image, tf.float32)
    ratio = size / tf.cast(tf.minimum(h, w), tf.float64)
    # As 2021: the float64 product h * ratio, made a float32 tensor, rounded half to even.
    new_size = lambda n: tf.cast(tf.round(tf.cast(tf.cast(n, tf.float64) * ratio, tf.float32)), tf.int32)
    new_h, new_w = new_size(h), new_size(w)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
    image = tf.image.crop_to_bounding_box(image, (new_h - size) // 2, (new_w - size) // 2, size, size)
    image = tf.clip_by_value(image, 0.0, 1.0)
  else:
    side = tf.minimum(h, w)
    image = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    image = tf.image.resize(image, [size, size], antialias=True, method=tf.image.ResizeMethod.BICUBIC)
    image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
    image = tf.image.convert_image_dtype(image, tf.float32)
  return tf.ensure_shape(image, [size, size, channels])
