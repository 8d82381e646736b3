"""A config's train state, set up in one place for training, sampling and evaluation.

`losses.create_train_state(params, optimizer)` is the state itself (step, parameters, Adam state, EMA). This
module adds what every mode shares around it: the initialiser of a config's network, the abstract state (shapes
and dtypes only, what Orbax restores into), and the restoration of a checkpoint's EMA parameters.
"""
import jax
import jax.numpy as jnp

from score_sde import checkpointing, losses, parallel, settings
from score_sde.models import utils as mutils


def label_dtype(config):
  """The dtype of the labels a network is initialised with: int32 for discrete (index-labelled) training,
  float32 for continuous time, as the 2021 code initialised its models."""
  return jnp.float32 if settings.TrainingSettings.from_config(config).continuous else jnp.int32


def init_fn(config, model, optimizer=None):
  """`init(rng) -> losses.TrainState`: fresh parameters of `model` for config's image shape, their EMA twin and
  the optimizer's state (default `losses.get_optimizer(config.optim)`)."""
  optimizer = losses.get_optimizer(config.optim) if optimizer is None else optimizer
  h, c = config.data.image_size, config.data.num_channels
  dtype = label_dtype(config)

  def init(rng):
    return losses.create_train_state(mutils.init_params(model, rng, (1, h, h, c), dtype), optimizer)

  return init


def abstract_train_state(config, model, sharding=None, optimizer=None):
  """The train state's shapes and dtypes (nothing computed), laid out as `sharding` when given."""
  abstract = jax.eval_shape(init_fn(config, model, optimizer), jax.random.PRNGKey(0))
  return abstract if sharding is None else parallel.abstract_with_sharding(abstract, sharding)


def init_train_state(config, model, rng, sharding=None, optimizer=None):
  """A freshly initialised train state (compiled once, see `mutils.compile_once`), laid out as `sharding`."""
  return mutils.compile_once(init_fn(config, model, optimizer), rng, out_shardings=sharding)


def restore_ema_params(config, workdir, model, mesh, step=None):
  """(step, EMA parameters) of checkpoint `step`, by default `eval.ckpt_id` (a step; -1 = the newest one).

  With `eval.pretrained` set (a released 2021 Flax / PyTorch-port file, or an Orbax workdir), that checkpoint
  is read instead of `workdir`'s and `step` is ignored (`score_sde/pretrained.py`).
  """
  e = settings.EvalSettings.from_config(config)
  if e.pretrained:
    from score_sde import pretrained  # pylint: disable=g-import-not-at-top
    step_, params = pretrained.load_ema_params(e.pretrained, config, return_step=True)
    return step_, jax.device_put(params, parallel.replicated(mesh))
  abstract = abstract_train_state(config, model, parallel.replicated(mesh))
  ckpts = checkpointing.Checkpoints(workdir, read_only=True)
  try:
    step = e.ckpt_id if step is None else step
    if step < 0:
      state = ckpts.restore_latest(abstract)
      if state is None:
        raise checkpointing.CheckpointError(f"no checkpoint in {workdir}: train first (--mode train).")
    else:
      state = ckpts.restore_step(int(step), abstract)
  finally:
    ckpts.close()
  return int(state.step), state.ema_params
