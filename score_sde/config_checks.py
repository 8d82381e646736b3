"""Checks a config before anything is compiled, so that bad input fails fast with a one-line message."""
import jax

from score_sde import losses, sampling, sde_lib, settings
from score_sde.models import ops
from score_sde.models import utils as mutils


def check_batch_size(batch_size, key, num_devices=None):
  num_devices = jax.device_count() if num_devices is None else num_devices
  if batch_size <= 0 or batch_size % num_devices:
    raise ValueError(f"{key}={batch_size} must be a positive multiple of the device count ({num_devices}).")


def validate_config(config, num_devices=None):
  """Builds the SDE, the model (its from_config validates every knob) and the loss; checks batch sizes.

  Returns (sde, model) so callers need not build them twice.
  """
  sde = sde_lib.get_sde(config)
  model = mutils.create_model(config)
  losses.get_loss_fn_from_config(config, sde, model, train=True)
  check_batch_size(config.training.batch_size, "training.batch_size", num_devices)
  check_batch_size(config.eval.batch_size, "eval.batch_size", num_devices)
  losses.check_memory_knobs(config, num_devices)
  ops.check_impl(settings.TrainingSettings.from_config(config).conv_impl)
  method = settings.SamplingSettings.from_config(config).method
  if method not in sampling.registered_samplers():  # before a checkpoint is restored or a step compiled
    raise ValueError(f"sampling.method={config.sampling.method!r} is not one of {sampling.registered_samplers()}.")
  return sde, model
