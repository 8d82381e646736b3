"""Shape verification of a checkpoint's trees against a config, and the hint at the config it belongs to.

Every leaf's path and shape is verified against the config's tree before anything is returned; a mismatch
raises `checkpointing.CheckpointError` listing the first differences and the config the file most likely
belongs to.
"""
import importlib
import pathlib

from score_sde.checkpointing import CheckpointError
from score_sde.pretrained_layout import TORCH_MODELS, abstract_params, flat_params, torch_layout

_MAX_DIFFS = 5


def _shape_diffs(expected, found):
  """The first differences between {path: shape} maps, as text, expected order first."""
  diffs = []
  for path, shape in expected.items():
    if path not in found:
      diffs.append(f"{path}: expected {shape}, found nothing")
    elif tuple(found[path]) != tuple(shape):
      diffs.append(f"{path}: expected {shape}, found {tuple(found[path])}")
  diffs += [f"{path}: expected nothing, found {tuple(found[path])}" for path in found if path not in expected]
  return diffs


def verify(where, fmt, config, expected, found, kind):
  """Raises CheckpointError unless the {path: shape} maps `expected` and `found` agree.

  The message names `fmt` (the file's format), the first differences and, for kind 'flax' or 'torch' (the
  form of the paths), the configs the file most likely belongs to; kind None gives no hint.
  """
  diffs = _shape_diffs(expected, found)
  if not diffs:
    return
  guess = _likely_configs(found, kind) if kind else []
  hint = (f"it most likely belongs to {' or '.join(guess)}" if guess else
          "it matches none of the paper configs in configs/")
  raise CheckpointError(
      f"{fmt} checkpoint {where} does not fit config model {config.model.name!r} ({len(diffs)} differences; first: "
      f"{'; '.join(diffs[:_MAX_DIFFS])}); {hint}: pass that --config (nothing was loaded or written).")


def _config_modules():
  root = pathlib.Path(__file__).resolve().parent.parent / "configs"
  names = []
  for sub in ("ve", "vp", "subvp"):
    for f in sorted((root / sub).rglob("*.py")):
      if f.name != "__init__.py":
        names.append("configs." + ".".join(f.relative_to(root).with_suffix("").parts))
  return names


def _config_signature(module_name, kind):
  """{path: shape} of a config's tree in the form `kind` ('flax' or 'torch'), or None if unbuildable."""
  try:
    config = importlib.import_module(module_name).get_config()
    if kind == "torch":
      return {e[0]: e[2] for e in torch_layout(config)}
    return {"/".join(p): tuple(v.shape) for p, v in flat_params(abstract_params(config)[1]).items()}
  except Exception:  # pylint: disable=broad-except
    return None


def _family(config):
  """(top-level resblock class, Fourier embedding?) of a config's network, from its knobs alone."""
  name = config.model.name
  if name == "ncsnpp":
    block = "ResnetBlockBigGANpp" if config.model.resblock_type == "biggan" else "ResnetBlockDDPMpp"
    return block, config.model.embedding_type == "fourier"
  if name == "ddpm":
    return "ResnetBlockDDPM", False
  return name, False


def _likely_configs(found, kind):
  """The configs/ modules whose parameter tree equals `found` (or comes closest), cheaply pre-filtered."""
  nf, blocks = None, None
  if kind == "torch":
    fourier = "module.all_modules.0.W" in found
    block = None
    first_conv = next((v for v in found.values() if len(v) == 4), None)
    nf = first_conv[0] if first_conv else None
  else:
    tops = {p.split("/")[0].rsplit("_", 1)[0] for p in found}
    fourier = "GaussianFourierProjection" in tops
    block = next((b for b in ("ResnetBlockBigGANpp", "ResnetBlockDDPMpp", "ResnetBlockDDPM") if b in tops), None)
    nf = found.get("Conv_0/bias", (None,))[0]
    blocks = len({p.split("/")[0] for p in found if block and p.split("/")[0].rsplit("_", 1)[0] == block})
  candidates = []
  for name in _config_modules():
    try:
      config = importlib.import_module(name).get_config()
    except Exception:  # pylint: disable=broad-except
      continue
    if kind == "torch" and config.model.name not in TORCH_MODELS:
      continue
    fam_block, fam_fourier = _family(config)
    if fam_fourier != fourier or (block is not None and fam_block != block) or (
        kind != "torch" and block is None and fam_block.startswith("ResnetBlock")):
      continue
    if nf is not None and "nf" in config.model and config.model.nf != nf:
      continue
    if blocks and fam_block.startswith("ResnetBlock"):
      levels, per = len(config.model.ch_mult), config.model.num_res_blocks
      downs_ups = 2 * (levels - 1) if fam_block == "ResnetBlockBigGANpp" else 0
      if levels * per + levels * (per + 1) + 2 + downs_ups != blocks:
        continue
    candidates.append(name)
  best, best_score = [], None
  for name in candidates:
    signature = _config_signature(name, kind)
    if signature is None:
      continue
    score = len(_shape_diffs(signature, found))
    if best_score is None or score < best_score:
      best, best_score = [name], score
    elif score == best_score:
      best.append(name)
  if best_score is None or best_score > max(3, len(found) // 10):
    return []
  return best[:4]
