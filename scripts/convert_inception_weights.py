"""Converts pytorch-fid's FID Inception weights (.pth) into the .npz that `score_sde.inception` loads.

Get the PyTorch file from the pytorch-fid GitHub release (the TF 2015-12-05 FID graph ported to PyTorch):

  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

then, on any machine with torch (the .npz it writes needs no torch):

  python scripts/convert_inception_weights.py --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

and evaluate with --config.eval.inception_path=inception_fid.npz. The conversion is total: every tensor of the
state_dict is used with its exact shape (only batch-norm `num_batches_tracked` counters are skipped), or it
stops with an error naming the tensor.
"""
import argparse
import sys


def convert(pth_path, out_path):
  """Reads the state_dict at `pth_path`, writes the Flax variables to `out_path`; returns the tensor count."""
  import torch  # pylint: disable=import-outside-toplevel  (only the conversion needs torch)

  from score_sde import inception  # pylint: disable=import-outside-toplevel

  try:
    state = torch.load(pth_path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise ValueError(f"{pth_path!r} does not exist; download it from {inception.WEIGHTS_URL}.") from None
  except Exception as err:  # pylint: disable=broad-except  (torch raises many types for a bad file)
    raise ValueError(f"{pth_path!r} is not a readable PyTorch state_dict ({type(err).__name__}: {err}).") from None
  if not isinstance(state, dict):
    raise ValueError(f"{pth_path!r} holds a {type(state).__name__}, not a state_dict.")
  arrays = {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}
  variables = inception.variables_from_state_dict(arrays)
  inception.save_variables(out_path, variables)
  return len(arrays)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pth", required=True, help="pytorch-fid's pt_inception-2015-12-05-*.pth")
  parser.add_argument("--out", required=True, help="where to write the .npz")
  args = parser.parse_args(argv)
  try:
    count = convert(args.pth, args.out)
  except ValueError as err:
    sys.exit(f"error: {err}")
  print(f"converted {count} tensors -> {args.out}")


if __name__ == "__main__":
  main()
