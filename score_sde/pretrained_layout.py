"""A config's parameter tree (abstract, nothing computed) and its layout in the PyTorch port's `.pth` files.

The name mapping torch -> Flax (`torch_layout`) is derived from the network definitions rather than tabulated per
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
"""
import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from score_sde import train_state
from score_sde.checkpointing import CheckpointError
from score_sde.models import utils as mutils

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
TORCH_MODELS = ("ncsnpp", "ddpm")


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
    params = jax.eval_shape(lambda k: mutils.init_params(model, k, (1, h, h, c), train_state.label_dtype(config)),
                            jax.random.PRNGKey(0))
  return model, params, order


def flat_params(tree):
  """{path tuple: leaf} of a nested dict (or FrozenDict) tree, in sorted path order (jax's leaf order)."""
  return dict(sorted(traverse_util.flatten_dict(tree).items()))


unflat_params = traverse_util.unflatten_dict


def _module_class(name):
  return name.rsplit("_", 1)[0]


def torch_layout(config):
  """The port's parameters of `config`'s network, in `model.parameters()` order.

  A list of (torch state-dict name, Flax path tuple, torch shape, requires_grad, layer kind); the state-dict
  name has the DataParallel `module.` prefix; the kind ('dense', 'conv', 'groupnorm', 'nin', 'fourier')
  selects the layout conversion (`to_flax_layout`). See the module docstring for the derivation.
  """
  check_torch_model(config)
  _, params, order = abstract_params(config)
  return layout_of(params, order)


def check_torch_model(config):
  """CheckpointError unless the PyTorch port released models of `config.model.name`."""
  if config.model.name not in TORCH_MODELS:
    raise CheckpointError(f"the PyTorch port released no {config.model.name!r} models (only {TORCH_MODELS}); "
                          "use a 2021 Flax checkpoint for this config.")


def layout_of(params, order):
  """`torch_layout` of an abstract params tree and its modules' creation order (`abstract_params`)."""
  flat = flat_params(params)
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
