"""Reading the 2021 Flax checkpoints into verified numpy trees.

2021 Flax (`checkpoint_<k>`, written by flax's `save_checkpoint`): msgpack of the state dict of
`State(step, optimizer, lr, model_state, ema_rate, params_ema, rng)`, where `optimizer` is
`{'target': params, 'state': {'step', 'param_states': <per leaf {'grad_ema', 'grad_sq_ema'}>}}`. It is read
as plain nested dicts (flax.optim is gone). Our parameter names are the 2021 ones, so the trees are used
as they are; `model_state` (other collections) is empty for every released model and ignored.
"""
import numpy as np
from flax import serialization

from score_sde.checkpointing import CheckpointError
from score_sde.pretrained_layout import abstract_params, flat_params, unflat_params
from score_sde.pretrained_verify import verify

FORMAT = "2021 Flax msgpack"


def _read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


def _read_flax_2021(path):
  """The state dict of a 2021 Flax checkpoint as nested dicts of numpy arrays."""
  try:
    state = serialization.msgpack_restore(_read_bytes(path))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"2021 Flax checkpoint {path} is unreadable ({type(e).__name__}: {e}); the file is "
                          "truncated or corrupt: download it again.") from e
  if not isinstance(state, dict) or not {"optimizer", "params_ema", "step"} <= set(state) or not isinstance(
      state["optimizer"], dict) or "target" not in state["optimizer"]:
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise CheckpointError(f"{path} is a msgpack file but not a 2021 score_sde checkpoint (top-level entries "
                          f"{keys}, expected step, optimizer, lr, model_state, ema_rate, params_ema, rng); check "
                          "the path.")
  return state


def _flax_tree(where, config, tree, expected_flat, what):
  flat = flat_params(tree)
  found = {"/".join(p): tuple(np.shape(v)) for p, v in flat.items()}
  expected = {"/".join(p): tuple(v.shape) for p, v in expected_flat.items()}
  verify(f"{where} ({what})", FORMAT, config, expected, found, "flax")
  return {p: _as_float(flat[p], where) for p in expected_flat}


def _as_float(value, where):
  value = np.asarray(value)
  if not np.issubdtype(value.dtype, np.floating):
    raise CheckpointError(f"checkpoint {where} holds a {value.dtype} parameter where floats belong; the file is "
                          "corrupt: download it again.")
  return value.astype(np.float32, copy=False)


def load(path, config, with_train_state):
  """{'ema', 'step'[, 'params'[, 'adam': (count, mu, nu)]]} of the file at `path`, as numpy trees."""
  _, params, _ = abstract_params(config)
  expected = flat_params(params)
  state = _read_flax_2021(path)
  out = {"ema": unflat_params(_flax_tree(path, config, state["params_ema"], expected, "params_ema")),
         "step": int(np.asarray(state["step"]))}
  if with_train_state:
    opt = state["optimizer"]
    out["params"] = unflat_params(_flax_tree(path, config, opt["target"], expected, "optimizer.target"))
    param_states = opt.get("state", {}).get("param_states") if isinstance(opt.get("state"), dict) else None
    if param_states:
      flat_states = flat_params(param_states)
      moments = {}
      for name in ("grad_ema", "grad_sq_ema"):
        tree = unflat_params({p[:-1]: v for p, v in flat_states.items() if p[-1] == name})
        moments[name] = unflat_params(_flax_tree(path, config, tree, expected, f"optimizer Adam {name}"))
      out["adam"] = (int(np.asarray(opt["state"].get("step", state["step"]))), moments["grad_ema"],
                     moments["grad_sq_ema"])
  return out
