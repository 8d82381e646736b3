"""Training objectives (Song et al. 2021 eq. 7; SMLD; DDPM eq. 14), the optimizer, EMA and the pure steps.

Every loss is `loss_fn(params, images, rng) -> scalar` (the training losses are `Objective`s: per-example
draws and losses, so a batch can be cut into micro-batches); every step is `(state, batch, rng) -> (state,
metrics)` with `batch = {'image': (B, H, W, C)}`, ready to be jit-compiled and sharded by the training loop.
The train step's memory knobs (`training.remat`, `compute_dtype`, `grad_accum_steps`) are applied by
`get_train_step_from_config`; benchmarks/memory.py measures them.
"""
import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jax.sharding import PartitionSpec as P

from score_sde import mixed_precision, parallel, settings
from score_sde.models import remat as remat_lib
from score_sde.models import utils as mutils


# ----------------------------------------------------------------------------------------------- optimizer
def get_optimizer(optim_config):
  """Adam with linear warmup, global-norm clipping and (decoupled) weight decay, from `config.optim`.

  lr(step) = lr * min(step / warmup, 1) evaluated at the pre-increment step, so the first update has lr 0
  as in the reference. Clipping is off when grad_clip < 0.
  """
  if optim_config.optimizer.lower() != "adam":
    raise ValueError(f"optim.optimizer={optim_config.optimizer!r} is not one of ['Adam'].")
  lr, warmup = float(optim_config.lr), int(optim_config.warmup)
  if warmup > 0:
    schedule = lambda count: lr * jnp.minimum(count / warmup, 1.0)
  else:
    schedule = lr
  adam = optax.adamw(schedule, b1=optim_config.beta1, b2=0.999, eps=optim_config.eps,
                     weight_decay=optim_config.weight_decay)
  if optim_config.grad_clip >= 0:
    return optax.chain(clip_by_global_norm(float(optim_config.grad_clip)), adam)
  return adam


def clip_by_global_norm(max_norm):
  """g * (max_norm / max(||g||, max_norm)) for every leaf, ||g|| the L2 norm over all leaves (the 2021 rule).

  Unlike `optax.clip_by_global_norm` (a select between g and g / ||g|| * max_norm), this is one scalar factor
  per step, so XLA folds it into the Adam moment updates instead of writing a clipped copy of every gradient
  (a measurable share of the optimizer's tail after the backward pass: benchmarks/train_step.py). Its state is
  optax's `EmptyState`, like optax's version, so checkpoints are interchangeable.
  """

  def update_fn(updates, state, params=None):
    del params
    factor = max_norm / jnp.maximum(optax.tree.norm(updates), max_norm)
    return jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


@flax.struct.dataclass
class TrainState:
  """Everything a training run needs to resume: EMA parameters live beside the raw ones."""
  step: jax.Array
  params: flax.core.FrozenDict
  opt_state: optax.OptState
  ema_params: flax.core.FrozenDict


def create_train_state(params, optimizer):
  # The EMA starts at the initial parameters, in buffers of its own so that the state can be donated.
  ema_params = jax.tree_util.tree_map(lambda p: jnp.array(p, copy=True), params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    ema_params=ema_params)


# --------------------------------------------------------------------------------------------------- losses
def _reduce_fn(reduce_mean):
  """Per-example reduction over pixels: the mean, or 0.5 * the sum (the reference's default)."""
  if reduce_mean:
    return lambda x: jnp.mean(x.reshape(x.shape[0], -1), axis=-1)
  return lambda x: 0.5 * jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _bcast(v, x):
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective: `objective(params, images, rng) -> scalar`, the mean over the batch of per-example
  losses (2021's convention), in the two halves that let a batch be cut into micro-batches
  (`training.grad_accum_steps`) with the full batch's per-example randomness:

  draw(rng, shape) -> (noise, rng_net): everything drawn per example (a dict of arrays with leading axis B:
    the times or noise levels and the Gaussian noise), and the rng left for the network (dropout);
  losses(params, images, noise, rng_net) -> (B,): the per-example losses.
  """
  draw: Callable
  losses: Callable

  def __call__(self, params, images, rng):
    noise, rng_net = self.draw(rng, images.shape)
    return jnp.mean(self.losses(params, images, noise, rng_net))


def get_sde_loss_fn(sde, score_fn, reduce_mean=True, likelihood_weighting=False, eps=1e-5):
  """Denoising score matching over continuous t ~ U(eps, T) (eq. 7).

  Without weighting, lambda(t) = std^2: |s std + z|^2. With likelihood weighting, lambda(t) = g(t)^2
  (Song et al. 2021b): |s + z / std|^2 g^2, which bounds the negative log-likelihood.
  """
  reduce_op = _reduce_fn(reduce_mean)

  def draw(rng, shape):
    rng_t, rng_z, rng_net = jax.random.split(rng, 3)
    t = jax.random.uniform(rng_t, (shape[0],), minval=eps, maxval=sde.T)
    return {"t": t, "z": jax.random.normal(rng_z, shape)}, rng_net

  def losses(params, images, noise, rng_net):
    t, z = noise["t"], noise["z"]
    mean, std = sde.marginal_prob(images, t)
    perturbed = mean + _bcast(std, images) * z
    score = score_fn(params, perturbed, t, rng=rng_net)
    if likelihood_weighting:
      g2 = sde.sde(jnp.zeros_like(images), t)[1] ** 2
      return reduce_op(jnp.square(score + z / _bcast(std, images))) * g2
    return reduce_op(jnp.square(score * _bcast(std, images) + z))

  return Objective(draw, losses)


def _draw_labels(num_labels):
  """`draw` of the discrete losses: a uniform noise-level index and standard normal noise per example."""

  def draw(rng, shape):
    rng_label, rng_z, rng_net = jax.random.split(rng, 3)
    labels = jax.random.randint(rng_label, (shape[0],), 0, num_labels)
    return {"labels": labels, "z": jax.random.normal(rng_z, shape)}, rng_net

  return draw


def get_smld_loss_fn(vesde, model_fn, reduce_mean=False):
  """SMLD (NCSN) loss: sum over noise levels of sigma^2 |s(x + sigma z, i) + z / sigma|^2, i uniform."""
  if vesde.discrete_chain != "smld":
    raise ValueError("The SMLD loss needs training.sde='vesde'.")
  sigmas_desc = jnp.asarray(vesde.discrete_sigmas[::-1].copy())  # label 0 = sigma_max
  reduce_op = _reduce_fn(reduce_mean)

  def losses(params, images, noise, rng_net):
    labels = noise["labels"]
    sigmas = _bcast(sigmas_desc[labels], images)
    perturbation = noise["z"] * sigmas
    score = model_fn(params, images + perturbation, labels, rng_net)
    target = -perturbation / sigmas ** 2
    return reduce_op(jnp.square(score - target)) * sigmas.reshape(-1) ** 2

  return Objective(_draw_labels(vesde.N), losses)


def get_ddpm_loss_fn(vpsde, model_fn, reduce_mean=True):
  """DDPM's L_simple (DDPM eq. 14): |eps - eps_theta(sqrt(abar) x + sqrt(1 - abar) eps, i)|^2."""
  if vpsde.discrete_chain != "ddpm":
    raise ValueError("The DDPM loss needs training.sde='vpsde' (sub-VP has no discrete chain).")
  sqrt_abar = jnp.asarray(vpsde.sqrt_alphas_cumprod)
  sqrt_1m_abar = jnp.asarray(vpsde.sqrt_1m_alphas_cumprod)
  reduce_op = _reduce_fn(reduce_mean)

  def losses(params, images, noise, rng_net):
    labels, z = noise["labels"], noise["z"]
    perturbed = _bcast(sqrt_abar[labels], images) * images + _bcast(sqrt_1m_abar[labels], images) * z
    eps_pred = model_fn(params, perturbed, labels, rng_net)
    return reduce_op(jnp.square(eps_pred - z))

  return Objective(_draw_labels(vpsde.N), losses)


def get_loss_fn(sde, model, train, reduce_mean=False, continuous=True, likelihood_weighting=False, eps=1e-5):
  """The objective chosen by `config.training`: continuous SDE loss, or SMLD / DDPM when discrete."""
  if continuous:
    score_fn = mutils.get_score_fn(sde, model, train=train, continuous=True)
    return get_sde_loss_fn(sde, score_fn, reduce_mean, likelihood_weighting, eps)
  if likelihood_weighting:
    raise ValueError("training.likelihood_weighting=True needs training.continuous=True "
                     "(the discrete SMLD/DDPM losses have fixed weights).")
  model_fn = mutils.get_model_fn(model, train=train)
  if sde.discrete_chain == "smld":
    return get_smld_loss_fn(sde, model_fn, reduce_mean)
  if sde.discrete_chain == "ddpm":
    return get_ddpm_loss_fn(sde, model_fn, reduce_mean)
  raise ValueError(f"training.continuous=False is defined for training.sde in ['vesde' (SMLD), 'vpsde' (DDPM)], "
                   f"not {type(sde).__name__}; set training.continuous=True.")


def get_loss_fn_from_config(config, sde, model, train):
  t = config.training
  return get_loss_fn(sde, model, train, reduce_mean=t.reduce_mean, continuous=t.continuous,
                     likelihood_weighting=t.likelihood_weighting)


# ------------------------------------------------------------------------------------- memory knobs (training)
def check_memory_knobs(config, num_devices=None):
  """One-line ValueErrors for `training.remat`, `compute_dtype` and `grad_accum_steps` values a train step
  cannot take; to run before anything is written (`config_checks.validate_config`)."""
  t = settings.TrainingSettings.from_config(config)  # remat must be a bool, grad_accum_steps an int
  mixed_precision.check_compute_dtype(t.compute_dtype)
  k = t.grad_accum_steps
  if k < 1:
    raise ValueError(f"training.grad_accum_steps={k} must be >= 1.")
  num_devices = jax.device_count() if num_devices is None else num_devices
  if k > 1 and t.batch_size % (k * num_devices):
    raise ValueError(f"training.batch_size={t.batch_size} must be a multiple of training.grad_accum_steps x the "
                     f"device count = {k} x {num_devices} (each device cuts its share of the batch into {k} "
                     "micro-batches); change either.")


def train_model(model, remat=False, compute_dtype="float32"):
  """The network the train step's loss differentiates: `model` with its residual blocks rematerialised
  (`models/remat.py`) and computing in `compute_dtype` (`mixed_precision.py`); the same parameters."""
  return mixed_precision.with_compute_dtype(remat_lib.with_remat(model, remat), compute_dtype)


def get_train_step_from_config(config, sde, model, optimizer):
  """`get_train_step` for `config`: the loss of `train_model(model, training.remat, training.compute_dtype)`
  (pass `model` with its train-step ops already applied), `training.grad_accum_steps` micro-batches."""
  check_memory_knobs(config)
  t = settings.TrainingSettings.from_config(config)
  loss_fn = get_loss_fn_from_config(config, sde, train_model(model, t.remat, t.compute_dtype), train=True)
  return get_train_step(loss_fn, optimizer, config.model.ema_rate, grad_accum_steps=t.grad_accum_steps)


# ---------------------------------------------------------------------------------------------------- steps
def micro_batches(x, k):
  """(B, ...) -> (k, B / k, ...): micro-batch j holds examples j, j + k, j + 2k, ..."""
  return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)


def accumulated_value_and_grad(objective, k):
  """`value_and_grad(objective)` as the mean over `k` micro-batches, one compiled loop (`lax.scan`) per device.

  The full batch's per-example randomness is drawn once, then each device (`shard_map` over the data axis of
  `parallel.make_mesh()`, the training loop's mesh) cuts its share of the images and their draws into k
  micro-batches (`micro_batches`: a device's every k-th example), sums the micro-batch mean losses and gradients
  and divides by k; one `pmean` over the devices then gives the full batch's mean loss and gradient, up to float
  rounding, in one all-reduce per step (a scan over globally sharded micro-batches would all-reduce in every
  iteration). Each example sees the times / noise levels and noise it would see in the full batch. Only the
  network's own rng (dropout) is drawn per device and micro-batch (fold_in): equally distributed masks, but not
  the full batch's bits, so with dropout the update equals the full batch's in distribution only.
  """
  if not isinstance(objective, Objective):
    raise ValueError("training.grad_accum_steps > 1 needs a losses.Objective (a loss with per-example draws).")
  grad_fn = jax.value_and_grad(lambda p, x, n, r: jnp.mean(objective.losses(p, x, n, r)))

  def local_value_and_grad(params, images, noise, rng_net):
    if images.shape[0] % k:
      raise ValueError(f"a share of {images.shape[0]} examples per device does not split into "
                       f"training.grad_accum_steps={k} micro-batches.")
    micro = jax.tree_util.tree_map(lambda a: micro_batches(a, k), (images, noise))
    rng_net = jax.random.fold_in(rng_net, jax.lax.axis_index(parallel.DATA_AXIS))
    # Parameters as this device's own ("varying") values: their gradients are then this device's sums, reduced
    # once by the pmean below (gradients of the replicated parameters would be all-reduced in every
    # micro-batch's backward pass).
    params = jax.lax.pcast(params, (parallel.DATA_AXIS,), to="varying")

    def body(total, inputs):
      j, (x, n) = inputs
      loss_and_grads = grad_fn(params, x, n, jax.random.fold_in(rng_net, j))
      return jax.tree_util.tree_map(jnp.add, total, loss_and_grads), None

    # The sums differ from device to device until the pmean (varying, like the parameters).
    zeros = (jax.lax.pcast(jnp.zeros((), jnp.float32), (parallel.DATA_AXIS,), to="varying"),
             jax.tree_util.tree_map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    return jax.lax.pmean(jax.tree_util.tree_map(lambda v: v / k, total), parallel.DATA_AXIS)

  def value_and_grad(params, images, rng):
    noise, rng_net = objective.draw(rng, images.shape)
    batch = P(parallel.DATA_AXIS)
    return jax.shard_map(local_value_and_grad, mesh=parallel.make_mesh(), in_specs=(P(), batch, batch, P()),
                         out_specs=P())(params, images, noise, rng_net)

  return value_and_grad


def get_train_step(loss_fn, optimizer, ema_rate, grad_accum_steps=1):
  """`train_step(state, batch, rng) -> (state, metrics)`: one Adam update and one EMA update.

  How the network inside `loss_fn` computes is its model's `ops` (`train.train` builds the loss from
  `model.clone(ops=ops.resolve(training.conv_impl, devices))`); the parameters and the math are the same.
  With `grad_accum_steps` k > 1 the gradient is the mean over k micro-batches (`accumulated_value_and_grad`;
  `loss_fn` must be an `Objective`), still one optimizer and one EMA update per step; the metrics are the
  full batch's (its mean loss and the norm of its mean gradient).
  """
  if int(grad_accum_steps) != grad_accum_steps or grad_accum_steps < 1:
    raise ValueError(f"training.grad_accum_steps={grad_accum_steps!r} must be an integer >= 1.")
  if grad_accum_steps == 1:
    value_and_grad = jax.value_and_grad(loss_fn)
  else:
    value_and_grad = accumulated_value_and_grad(loss_fn, grad_accum_steps)

  def train_step(state, batch, rng):
    loss, grads = value_and_grad(state.params, batch["image"], rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, step_size=1.0 - ema_rate)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step


def get_eval_step(loss_fn):
  """`eval_step(state, batch, rng) -> (state, metrics)`: the loss of the EMA parameters; state unchanged."""

  def eval_step(state, batch, rng):
    return state, {"loss": loss_fn(state.ema_params, batch["image"], rng)}

  return eval_step
