"""Released checkpoints: the 2021 Flax msgpack files, the PyTorch port's `.pth` files and our Orbax ones.

    params = load_ema_params(path, config)    # the EMA weights, as `create_model(config)`'s 'params' tree
    state = load_train_state(path, config)    # losses.TrainState: params, EMA, step, Adam moments if present

The format is recognised from the file's content, never its name (`detect_format`):

* 2021 Flax (`checkpoint_<k>`, written by flax's `save_checkpoint`): the msgpack state dict of its `State`
  (`score_sde.pretrained_flax2021`).
* PyTorch port (`checkpoint_<k>.pth`): `{'optimizer', 'model', 'ema', 'step'}`, read with torch's weights-only
  loader (`score_sde.pretrained_torch`; the torch -> Flax name and array layout is `score_sde.pretrained_layout`).
* Our Orbax checkpoints: a workdir (`<workdir>/checkpoints`, `<workdir>/checkpoints-meta`, newest step) or
  one step folder `<workdir>/checkpoints/<step>`.

Every leaf's path and shape is verified against the config's tree before anything is returned; a mismatch
raises `checkpointing.CheckpointError` listing the first differences and the config the file most likely
belongs to (`score_sde.pretrained_verify`).
"""
import os
import pathlib

import jax
import jax.numpy as jnp
import optax

from score_sde import checkpointing, losses, pretrained_flax2021, pretrained_torch, train_state
from score_sde.models import utils as mutils
from score_sde.pretrained_layout import abstract_params, to_flax_layout, to_torch_layout, torch_layout

__all__ = ["FLAX_2021", "ORBAX", "TORCH_PORT", "CheckpointError", "abstract_params", "detect_format",
           "load_ema_params", "load_train_state", "to_flax_layout", "to_torch_layout", "torch_layout"]

FLAX_2021 = pretrained_flax2021.FORMAT
TORCH_PORT = pretrained_torch.FORMAT
ORBAX = "Orbax checkpoint"

CheckpointError = checkpointing.CheckpointError


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


# --------------------------------------------------------------------------------------------- Orbax
def _load_orbax(path, config):
  from score_sde import parallel  # pylint: disable=g-import-not-at-top
  workdir, step = _orbax_location(path)
  abstract = train_state.abstract_train_state(config, mutils.create_model(config),
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
    return fmt, pretrained_flax2021.load(str(path), config, with_train_state)
  if fmt == TORCH_PORT:
    return fmt, pretrained_torch.load(str(path), config, with_train_state)
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

