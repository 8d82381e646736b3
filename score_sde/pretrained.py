"""Released checkpoints: the 2021 Flax msgpack files, the PyTorch port's `.pth` files and our Orbax ones.

    params = load_ema_params(path, config)    # the EMA weights, as `create_model(config)`'s 'params' tree
    state = load_train_state(path, config)    # losses.TrainState: params, EMA, step, Adam moments if present

The format is recognised from the file's content, never its name (`detect_format`):

* 2021 Flax (`checkpoint_<k>`, written by flax's `save_checkpoint`): msgpack of the state dict of
  `State(step, optimizer, lr, model_state, ema_rate, params_ema, rng)`, where `optimizer` is
  `{'target': params, 'state': {'step', 'param_states': <per leaf {'grad_ema', 'grad_sq_ema'}>}}`. It is read
  as plain nested dicts (flax.optim is gone). Our parameter names are the 2021 ones, so the trees are used
  as they are; `model_state` (other collections) is empty for every released model and ignored.
* PyTorch port (`checkpoint_<k>.pth`): a pickle of `{'optimizer', 'model', 'ema', 'step'}`, read with torch's
  weights-only loader (tensors and plain containers only; any other object is refused, nothing executed).
  `model` is the state dict of `DataParallel(NCSNpp | DDPM)`; `ema` is `{'decay', 'num_updates',
  'shadow_params'}`, the shadow list in `model.parameters()` order restricted to parameters that require
  gradients. `optimizer` is torch Adam's state dict, its state keyed by the index in `model.parameters()`.
* Our Orbax checkpoints: a workdir (`<workdir>/checkpoints`, `<workdir>/checkpoints-meta`, newest step) or
  one step folder `<workdir>/checkpoints/<step>`.

Name mapping torch -> Flax (`torch_layout`), derived from the network definitions rather than tabulated per
config. Both ports build their networks as one flat list, `all_modules`, appended in the order the forward
pass uses the modules; our Flax modules create their top-level submodules in that same order, so the i-th
top-level Flax submodule in creation order (parameterless ones such as FIR `Downsample` without conv count
too, as they hold a list slot in torch) is `module.all_modules.<i>`. The order is read off our own model by
intercepting its first calls under `jax.eval_shape`. Inside a block the torch attribute names are the Flax
names (`GroupNorm_0`, `Conv_0`, `Dense_0`, `NIN_0`, `Conv2d_0`, ...), except `Combine`'s conv, which torch
calls `Conv` (Flax `Conv_0`). Within a block `model.parameters()` follows the torch `__init__` registration
order (`_TORCH_CHILD_ORDER`: it equals Flax creation order except in DDPM's `ResnetBlockDDPM`, which
registers both GroupNorms before the convs), and within a layer `weight` before `bias`. Leaves:

    nn.Linear   weight (out, in)          -> Dense   kernel (in, out)       transposed
    nn.Conv2d   weight (O, I, kh, kw)     -> Conv    kernel (kh, kw, I, O)
    FIR Conv2d  weight (O, I, k, k)       -> Conv2d  weight (k, k, I, O)
    GroupNorm   weight, bias              -> GroupNorm scale, bias
    NIN         W (in, out), b            -> NIN W, b                        as they are
    GaussianFourierProjection W (fixed, requires_grad=False: not in the EMA list; taken from `model`)

Every leaf's path and shape is verified against the config's tree before anything is returned; a mismatch
raises `checkpointing.CheckpointError` listing the first differences and the config the file most likely
belongs to.
"""
import functools
import importlib
import os
import pathlib
import pickle
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from score_sde import checkpointing, losses
from score_sde.models import utils as mutils

FLAX_2021 = "2021 Flax msgpack"
TORCH_PORT = "PyTorch port .pth"
ORBAX = "Orbax checkpoint"

CheckpointError = checkpointing.CheckpointError

# model.parameters() order of each block's children: the torch `__init__` registration order.
_TORCH_CHILD_ORDER = {
    "ResnetBlockDDPM": ("GroupNorm_0", "GroupNorm_1", "Conv_0", "Conv_1", "Dense_0", "Conv_2", "NIN_0"),
    "ResnetBlockDDPMpp": ("GroupNorm_0", "Conv_0", "Dense_0", "GroupNorm_1", "Conv_1", "Conv_2", "NIN_0"),
    "ResnetBlockBigGANpp": ("GroupNorm_0", "Conv_0", "Dense_0", "GroupNorm_1", "Conv_1", "Conv_2"),
    "AttnBlock": ("GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"),
    "AttnBlockpp": ("GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"),
    "Upsample": ("Conv_0", "Conv2d_0"),
    "Downsample": ("Conv_0", "Conv2d_0"),
    "Combine": ("Conv_0",),
}
_TORCH_CHILD_NAME = {("Combine", "Conv_0"): "Conv"}
_TORCH_MODELS = ("ncsnpp", "ddpm")
_MAX_DIFFS = 5


# ------------------------------------------------------------------------------------------- format detection
def detect_format(path):
  """FLAX_2021, TORCH_PORT or ORBAX, from the content at `path`; CheckpointError if it is none of them."""
  path = str(path)
  if os.path.isdir(path):
    if _orbax_location(path) is None:
      raise CheckpointError(f"{path} is a directory without a checkpoint (no checkpoints/ or checkpoints-meta/ "
                            "with a finished step, and not an Orbax step folder); pass a checkpoint file or a "
                            "training workdir.")
    return ORBAX
  if not os.path.isfile(path):
    raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
  with open(path, "rb") as f:
    head = f.read(8)
  if head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
    return TORCH_PORT  # torch.save: a zip archive (torch >= 1.6) or a legacy pickle stream
  if head and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
    return FLAX_2021  # a msgpack map: flax.serialization.to_bytes of the State's state dict
  raise CheckpointError(f"{path} is not a checkpoint this code reads (neither a 2021 Flax msgpack file, a PyTorch "
                        "port .pth nor an Orbax checkpoint); check the path.")


def _orbax_location(path):
  """(workdir, step or None) for an Orbax workdir or step folder, else None."""
  p = pathlib.Path(path)
  if (p / "checkpoints").is_dir() or (p / "checkpoints-meta").is_dir():
    ckpts = checkpointing.Checkpoints(str(p), read_only=True)
    try:
      found = ckpts.latest()[1] is not None
    finally:
      ckpts.close()
    return (str(p), None) if found else None
  if p.name.isdigit() and p.parent.name in ("checkpoints", "checkpoints-meta") and any(p.iterdir()):
    return str(p.parent.parent), int(p.name)
  return None


# --------------------------------------------------------------------------------------------- the model side
def _label_dtype(config):
  return jnp.float32 if config.training.get("continuous", True) else jnp.int32


def abstract_params(config):
  """(model, abstract 'params' tree, top-level modules in creation order) for `config`, nothing computed."""
  model = mutils.create_model(config)
  h, c = config.data.image_size, config.data.num_channels
  order = []

  def record(f, args, kwargs, context):
    path = tuple(context.module.path)
    if path and path not in order:
      order.append(path)
    return f(*args, **kwargs)

  with nn.intercept_methods(record):
    params = jax.eval_shape(lambda k: mutils.init_params(model, k, (1, h, h, c), _label_dtype(config)),
                            jax.random.PRNGKey(0))
  return model, params, order


def _flat(tree):
  """{path tuple: leaf} of a nested dict (or FrozenDict) tree, in sorted path order (jax's leaf order)."""
  return dict(sorted(traverse_util.flatten_dict(tree).items()))


_unflat = traverse_util.unflatten_dict


def _module_class(name):
  return name.rsplit("_", 1)[0]


def torch_layout(config):
  """The port's parameters of `config`'s network, in `model.parameters()` order.

  A list of (torch state-dict name, Flax path tuple, torch shape, requires_grad, layer kind); the state-dict
  name has the DataParallel `module.` prefix; the kind ('dense', 'conv', 'groupnorm', 'nin', 'fourier')
  selects the layout conversion (`to_flax_layout`). See the module docstring for the derivation.
  """
  _check_torch_model(config)
  _, params, order = abstract_params(config)
  return _layout(params, order)


def _check_torch_model(config):
  if config.model.name not in _TORCH_MODELS:
    raise CheckpointError(f"the PyTorch port released no {config.model.name!r} models (only {_TORCH_MODELS}); "
                          "use a 2021 Flax checkpoint for this config.")


def _layout(params, order):
  """`torch_layout` of an abstract params tree and its modules' creation order (`abstract_params`)."""
  flat = _flat(params)
  top = [path[0] for path in order if len(path) == 1]
  layout = []
  for index, name in enumerate(top):
    cls = _module_class(name)
    leaves = {p[1:]: v for p, v in flat.items() if p[0] == name}
    if not leaves:
      continue
    own = sorted((p for p in leaves if len(p) == 1), key=_leaf_rank)
    children = sorted({p[0] for p in leaves if len(p) > 1})
    if own and children:
      raise CheckpointError(f"cannot map {name} to the port: it holds both parameters and submodules.")
    if children:
      known = _TORCH_CHILD_ORDER.get(cls)
      if known is None or any(c not in known for c in children):
        raise CheckpointError(f"no PyTorch-port counterpart known for {name}'s submodules {children}.")
      children = [c for c in known if c in children]
    groups = [((), own)] if own else [((c,), sorted((p for p in leaves if p[0] == c), key=_leaf_rank))
                                      for c in children]
    for prefix, paths in groups:
      kind = _layer_kind({p[-1]: leaves[p] for p in paths})
      torch_prefix = f"module.all_modules.{index}"
      if prefix:
        torch_prefix += "." + _TORCH_CHILD_NAME.get((cls, prefix[0]), prefix[0])
      for p in paths:
        leaf = leaves[p]
        torch_name, shape = _torch_leaf(kind, p[-1], tuple(leaf.shape))
        layout.append((f"{torch_prefix}.{torch_name}", (name,) + p, shape, kind != "fourier", kind))
  return layout


def _leaf_rank(path):
  return (0 if path[-1] in ("kernel", "weight", "W", "scale") else 1, path[-1])


def _layer_kind(leaves):
  names = set(leaves)
  if names == {"W"}:
    return "fourier"
  if names == {"W", "b"}:
    return "nin"
  if names == {"scale", "bias"}:
    return "groupnorm"
  if "kernel" in names and leaves["kernel"].ndim == 2:
    return "dense"
  if "kernel" in names or "weight" in names:
    return "conv"
  raise CheckpointError(f"no PyTorch-port counterpart known for a layer with parameters {sorted(names)}.")


def _torch_leaf(kind, flax_name, shape):
  """(torch parameter name, torch shape) of a Flax leaf."""
  if kind in ("fourier", "nin"):
    return flax_name, shape
  if kind == "groupnorm":
    return ("weight" if flax_name == "scale" else "bias"), shape
  if flax_name == "bias":
    return "bias", shape
  if kind == "dense":
    return "weight", shape[::-1]
  return "weight", (shape[3], shape[2], shape[0], shape[1])


def to_flax_layout(value, kind):
  """A torch-layout array into the Flax layout: Linear transposed, conv OIHW -> HWIO, the rest as is."""
  value = np.asarray(value, np.float32)
  if kind == "dense" and value.ndim == 2:
    return value.T
  if kind == "conv" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value


def to_torch_layout(value, kind):
  """The inverse of `to_flax_layout` (for converters and tests)."""
  value = np.asarray(value)
  if kind == "dense" and value.ndim == 2:
    return value.T
  if kind == "conv" and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value


# --------------------------------------------------------------------------------------------- verification
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


def _verify(where, fmt, config, expected, found, kind):
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


@functools.lru_cache(maxsize=None)
def _config_signature(module_name, kind):
  """{path: shape} of a config's tree in the form `kind` ('flax' or 'torch'), or None if unbuildable."""
  try:
    config = importlib.import_module(module_name).get_config()
    if kind == "torch":
      return {e[0]: e[2] for e in torch_layout(config)}
    return {"/".join(p): tuple(v.shape) for p, v in _flat(abstract_params(config)[1]).items()}
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
    if kind == "torch" and config.model.name not in _TORCH_MODELS:
      continue
    fam_block, fam_fourier = _family(config)
    if fam_fourier != fourier or (block is not None and fam_block != block) or (
        kind != "torch" and block is None and fam_block.startswith("ResnetBlock")):
      continue
    if nf is not None and config.model.get("nf", nf) != nf:
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


# --------------------------------------------------------------------------------------------- 2021 Flax files
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
  flat = _flat(tree)
  found = {"/".join(p): tuple(np.shape(v)) for p, v in flat.items()}
  expected = {"/".join(p): tuple(v.shape) for p, v in expected_flat.items()}
  _verify(f"{where} ({what})", FLAX_2021, config, expected, found, "flax")
  return {p: _as_float(flat[p], where) for p in expected_flat}


def _as_float(value, where):
  value = np.asarray(value)
  if not np.issubdtype(value.dtype, np.floating):
    raise CheckpointError(f"checkpoint {where} holds a {value.dtype} parameter where floats belong; the file is "
                          "corrupt: download it again.")
  return value.astype(np.float32, copy=False)


def _load_flax_2021(path, config, with_train_state):
  _, params, _ = abstract_params(config)
  expected = _flat(params)
  state = _read_flax_2021(path)
  out = {"ema": _unflat(_flax_tree(path, config, state["params_ema"], expected, "params_ema")),
         "step": int(np.asarray(state["step"]))}
  if with_train_state:
    opt = state["optimizer"]
    out["params"] = _unflat(_flax_tree(path, config, opt["target"], expected, "optimizer.target"))
    param_states = opt.get("state", {}).get("param_states") if isinstance(opt.get("state"), dict) else None
    if param_states:
      flat_states = _flat(param_states)
      moments = {}
      for name in ("grad_ema", "grad_sq_ema"):
        tree = _unflat({p[:-1]: v for p, v in flat_states.items() if p[-1] == name})
        moments[name] = _unflat(_flax_tree(path, config, tree, expected, f"optimizer Adam {name}"))
      out["adam"] = (int(np.asarray(opt["state"].get("step", state["step"]))), moments["grad_ema"],
                     moments["grad_sq_ema"])
  return out


# --------------------------------------------------------------------------------------------- PyTorch port
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


def _load_torch(path, config, with_train_state):
  _check_torch_model(config)
  _, params, order = abstract_params(config)
  layout = _layout(params, order)
  expected_flat = _flat(params)
  raw = _torch_load(path)
  if not isinstance(raw, dict) or not {"model", "ema", "step"} <= set(raw) or not isinstance(raw["model"], dict):
    keys = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(f"{path} is a PyTorch file but not a score_sde_pytorch checkpoint (entries {keys}, "
                          "expected optimizer, model, ema, step); check the path.")
  model_sd = raw["model"]
  shape_of = lambda t: tuple(t.shape) if hasattr(t, "shape") else ()
  expected = {e[0]: e[2] for e in layout}
  found = {str(k): shape_of(v) for k, v in model_sd.items()}
  _verify(f"{path} (model)", TORCH_PORT, config, expected, found, "torch")

  def to_tree(values):
    flat = {fpath: to_flax_layout(_np(values[name]), kind) for name, fpath, _, _, kind in layout}
    return _unflat(flat)

  ema = raw["ema"]
  shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
  trainable = [entry for entry in layout if entry[3]]
  if not isinstance(shadow, (list, tuple)):
    raise CheckpointError(f"PyTorch checkpoint {path} has no EMA shadow_params list; not a score_sde_pytorch "
                          "checkpoint.")
  exp_shadow = {f"ema.shadow_params[{i}] ({e[0]})": e[2] for i, e in enumerate(trainable)}
  got_shadow = {f"ema.shadow_params[{i}] ({trainable[i][0] if i < len(trainable) else '?'})": shape_of(t)
                for i, t in enumerate(shadow)}
  _verify(f"{path} (ema)", TORCH_PORT, config, exp_shadow, got_shadow, None)
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
  return count, _unflat(mu), _unflat(nu)


# --------------------------------------------------------------------------------------------- Orbax
def _abstract_train_state(config):
  _, params, _ = abstract_params(config)
  optimizer = losses.get_optimizer(config.optim)
  return jax.eval_shape(lambda p: losses.create_train_state(p, optimizer), params)


def _load_orbax(path, config):
  from score_sde import parallel  # pylint: disable=g-import-not-at-top
  workdir, step = _orbax_location(path)
  abstract = parallel.abstract_with_sharding(_abstract_train_state(config),
                                             parallel.replicated(parallel.make_mesh()))
  ckpts = checkpointing.Checkpoints(workdir, read_only=True)
  try:
    return ckpts.restore_latest(abstract) if step is None else ckpts.restore_step(step, abstract)
  finally:
    ckpts.close()


# --------------------------------------------------------------------------------------------- public API
def _load(path, config, with_train_state):
  fmt = detect_format(path)
  if fmt == FLAX_2021:
    return fmt, _load_flax_2021(str(path), config, with_train_state)
  if fmt == TORCH_PORT:
    return fmt, _load_torch(str(path), config, with_train_state)
  return fmt, None


def load_ema_params(path, config, return_step=False):
  """The EMA parameters of the checkpoint at `path` (any format) as `create_model(config)`'s params tree.

  return_step: also return the training step, as (step, params).
  """
  fmt, loaded = _load(path, config, with_train_state=False)
  if fmt == ORBAX:
    state = _load_orbax(path, config)
    step, params = int(state.step), state.ema_params
  else:
    step, params = loaded["step"], jax.tree_util.tree_map(jnp.asarray, loaded["ema"])
  return (step, params) if return_step else params


def load_train_state(path, config):
  """losses.TrainState of the checkpoint at `path`: params, EMA, step, and Adam moments where it has them.

  Without Adam moments in the file they start at zero (count 0); the step is the file's in every case.
  """
  fmt, loaded = _load(path, config, with_train_state=True)
  if fmt == ORBAX:
    return _load_orbax(path, config)
  params = jax.tree_util.tree_map(jnp.asarray, loaded["params"])
  ema = jax.tree_util.tree_map(jnp.asarray, loaded["ema"])
  optimizer = losses.get_optimizer(config.optim)
  opt_state = optimizer.init(params)
  if "adam" in loaded:
    count, mu, nu = loaded["adam"]
    opt_state = _with_adam(opt_state, count, jax.tree_util.tree_map(jnp.asarray, mu),
                           jax.tree_util.tree_map(jnp.asarray, nu))
  state = losses.create_train_state(params, optimizer)
  state = state.replace(step=jnp.asarray(loaded["step"], jnp.int32), opt_state=opt_state, ema_params=ema)
  # Every leaf in a buffer of its own (the Adam and schedule counters, the fixed Fourier W of params and EMA
  # may share one here): the train step donates the whole state, and a buffer cannot be donated twice.
  return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)


def _with_adam(opt_state, count, mu, nu):
  """`opt_state` with its Adam moments and step counters set (the schedule's counter too)."""
  count = jnp.asarray(count, jnp.int32)
  found = []

  def visit(node):
    if isinstance(node, optax.ScaleByAdamState):
      found.append(True)
      return node._replace(count=count, mu=mu, nu=nu)
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=count)
    if isinstance(node, tuple) and not hasattr(node, "_fields"):
      return tuple(visit(n) for n in node)
    return node

  out = visit(opt_state)
  if not found:
    raise CheckpointError("this config's optimizer has no Adam state to take the checkpoint's moments.")
  return out

