"""Reading the PyTorch port's `.pth` checkpoints into verified numpy trees in our layout.

PyTorch port (`checkpoint_<k>.pth`): a pickle of `{'optimizer', 'model', 'ema', 'step'}`, read with torch's
weights-only loader (tensors and plain containers only; any other object is refused, nothing executed).
`model` is the state dict of `DataParallel(NCSNpp | DDPM)`; `ema` is `{'decay', 'num_updates',
'shadow_params'}`, the shadow list in `model.parameters()` order restricted to parameters that require
gradients. `optimizer` is torch Adam's state dict, its state keyed by the index in `model.parameters()`.

The layout conversion is `score_sde.pretrained_layout`.
"""
import pickle
import zipfile

import numpy as np

from score_sde.checkpointing import CheckpointError
from score_sde.pretrained_layout import (abstract_params, check_torch_model, flat_params, layout_of, to_flax_layout,
                                        unflat_params)
from score_sde.pretrained_verify import verify

FORMAT = "PyTorch port .pth"


def _torch_load(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(f"{path} is a PyTorch checkpoint; reading it needs torch: pip install "
                          "'score_sde[torch]' (or pip install torch).") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"PyTorch checkpoint {path} holds objects other than tensors and plain containers; "
                          f"refused, nothing was executed ({first[:200]}). Only load files you trust, and "
                          "re-save them as plain state dicts.") from None
  except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"PyTorch checkpoint {path} is unreadable ({type(e).__name__}: {first[:200]}); the "
                          "file is truncated or corrupt: download it again.") from None


def _np(t):
  return t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t)


def load(path, config, with_train_state):
  """{'ema', 'step'[, 'params'[, 'adam': (count, mu, nu)]]} of the file at `path`, as numpy trees."""
  check_torch_model(config)
  _, params, order = abstract_params(config)
  layout = layout_of(params, order)
  expected_flat = flat_params(params)
  raw = _torch_load(path)
  if not isinstance(raw, dict) or not {"model", "ema", "step"} <= set(raw) or not isinstance(raw["model"], dict):
    keys = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(f"{path} is a PyTorch file but not a score_sde_pytorch checkpoint (entries {keys}, "
                          "expected optimizer, model, ema, step); check the path.")
  model_sd = raw["model"]
  shape_of = lambda t: tuple(t.shape) if hasattr(t, "shape") else ()
  expected = {e[0]: e[2] for e in layout}
  found = {str(k): shape_of(v) for k, v in model_sd.items()}
  verify(f"{path} (model)", FORMAT, config, expected, found, "torch")

  def to_tree(values):
    flat = {fpath: to_flax_layout(_np(values[name]), kind) for name, fpath, _, _, kind in layout}
    return unflat_params(flat)

  ema = raw["ema"]
  shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
  trainable = [entry for entry in layout if entry[3]]
  if not isinstance(shadow, (list, tuple)):
    raise CheckpointError(f"PyTorch checkpoint {path} has no EMA shadow_params list; not a score_sde_pytorch "
                          "checkpoint.")
  exp_shadow = {f"ema.shadow_params[{i}] ({e[0]})": e[2] for i, e in enumerate(trainable)}
  got_shadow = {f"ema.shadow_params[{i}] ({trainable[i][0] if i < len(trainable) else '?'})": shape_of(t)
                for i, t in enumerate(shadow)}
  verify(f"{path} (ema)", FORMAT, config, exp_shadow, got_shadow, None)
  ema_values = {e[0]: t for e, t in zip(trainable, shadow)}
  ema_values.update({e[0]: model_sd[e[0]] for e in layout if not e[3]})  # the fixed Fourier W
  out = {"ema": to_tree(ema_values), "step": int(_np(raw["step"]))}
  if with_train_state:
    out["params"] = to_tree(model_sd)
    adam = _torch_adam(path, raw.get("optimizer"), layout, expected_flat)
    if adam is not None:
      out["adam"] = adam
  return out


def _torch_adam(path, opt, layout, expected_flat):
  """(count, mu, nu) from torch Adam's state dict, its state keyed by index in model.parameters()."""
  if not isinstance(opt, dict) or not opt.get("state"):
    return None
  groups = opt.get("param_groups") or [{"params": list(range(len(layout)))}]
  ids = [i for g in groups for i in g["params"]]
  if len(ids) != len(layout):
    raise CheckpointError(f"PyTorch checkpoint {path}: its optimizer covers {len(ids)} parameters, the model "
                          f"{len(layout)}; the file is inconsistent: load only the EMA (--mode sample/eval).")
  mu, nu, count = {}, {}, 0
  for pid, (_, fpath, shape, _, kind) in zip(ids, layout):
    entry = opt["state"].get(pid)
    fshape = expected_flat[fpath].shape
    if entry is None:  # no gradient ever (the fixed Fourier W): zero moments, as our stop_gradient gives
      mu[fpath] = nu[fpath] = np.zeros(fshape, np.float32)
      continue
    for key, target in (("exp_avg", mu), ("exp_avg_sq", nu)):
      value = entry[key]
      if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"PyTorch checkpoint {path}: optimizer {key} of {fpath} has shape "
                              f"{tuple(value.shape)}, expected {shape}; load only the EMA (--mode sample/eval).")
      target[fpath] = to_flax_layout(_np(value), kind)
    count = max(count, int(_np(entry.get("step", 0))))
  return count, unflat_params(mu), unflat_params(nu)
