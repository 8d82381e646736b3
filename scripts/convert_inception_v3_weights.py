"""Converts TF-slim's ImageNet Inception-v3 checkpoint into the .npz that `score_sde.inception_v3` loads.

This is the network behind the 2021 code's FID / KID at 256 px and above (the TF-Hub module
google/imagenet/inception_v3/feature_vector/4 was exported from this checkpoint). Get it from the TF-slim
model zoo (tensorflow/models, research/slim):

  http://download.tensorflow.org/models/inception_v3_2016_08_28.tar.gz

unpack it (`tar -xzf inception_v3_2016_08_28.tar.gz` gives inception_v3.ckpt), then, on any machine with
TensorFlow (the .npz it writes needs none):

  python scripts/convert_inception_v3_weights.py --ckpt inception_v3.ckpt --out inception_v3_imagenet.npz

and evaluate with --config.eval.inception_v3_path=inception_v3_imagenet.npz. The checkpoint is read with
`tf.train.load_checkpoint` (the V1 single-file format of that release and V2 prefixes alike). The conversion is
total over the network: all 376 variables of the 94 conv + batch-norm layers (`InceptionV3/<scope>/weights`,
`.../BatchNorm/beta`, `.../BatchNorm/moving_mean`, `.../BatchNorm/moving_variance`) must be there with their exact
shapes; only global_step and the AuxLogits / Logits classifiers, which the feature vector never uses, are skipped.
"""
import argparse
import os
import sys


def convert(ckpt_path, out_path):
  """Reads the checkpoint at `ckpt_path`, writes the Flax variables to `out_path`; returns (used, skipped) counts."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (only the conversion needs TensorFlow)

  from score_sde import inception_v3  # pylint: disable=import-outside-toplevel

  if ckpt_path.endswith((".tar.gz", ".tgz")):
    raise ValueError(f"{ckpt_path!r} is the archive: unpack it (tar -xzf) and pass the inception_v3.ckpt inside.")
  if not (os.path.exists(ckpt_path) or os.path.exists(ckpt_path + ".index")):
    raise ValueError(f"{ckpt_path!r} does not exist; download {inception_v3.CHECKPOINT_URL} and unpack it.")
  try:
    reader = tf.train.load_checkpoint(ckpt_path)
    names = sorted(reader.get_variable_to_shape_map())
    tensors = {name: reader.get_tensor(name) for name in names}
  except Exception as err:  # pylint: disable=broad-except  (TF raises DataLoss / NotFound / ... for a bad file)
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    raise ValueError(f"{ckpt_path!r} is not a readable TensorFlow checkpoint ({type(err).__name__}: "
                     f"{message}).") from None
  variables = inception_v3.variables_from_slim(tensors)
  inception_v3.save_variables(out_path, variables)
  used = len(inception_v3.expected_shapes())
  return used, len(tensors) - used


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ckpt", required=True, help="TF-slim's inception_v3.ckpt (from inception_v3_2016_08_28)")
  parser.add_argument("--out", required=True, help="where to write the .npz")
  args = parser.parse_args(argv)
  try:
    used, skipped = convert(args.ckpt, args.out)
  except ValueError as err:
    sys.exit(f"error: {err}")
  print(f"converted {used} tensors ({skipped} unused skipped) -> {args.out}")


if __name__ == "__main__":
  main()
