"""Deterministic image preprocessing of the streamed sources (TensorFlow): centre crops, resizes, LSUN's 2021 recipe.

Every function takes the `tensorflow` module as its first argument, so importing this module imports no TF.
"""


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
  """uint8 HWC LSUN image -> float32 (size, size, 3) in [0, 1], as the Score SDE code (2021) preprocesses LSUN.

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
  h, w = shape[0], shape[1]
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
  return tf.ensure_shape(image, [size, size, 3])
