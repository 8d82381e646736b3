"""Training objectives (Song et al. 2021 eq. 7; SMLD; DDPM eq. 14), the optimizer, EMA and the pure steps.

Every loss is `loss_fn(params, images, rng) -> scalar`; every step is `(state, batch, rng) -> (state, metrics)`
with `batch = {'image': (B, H, W, C)}`, ready to be jit-compiled and sharded by the training loop.
"""
import flax
import jax
import jax.numpy as jnp
import optax

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


def get_sde_loss_fn(sde, score_fn, reduce_mean=True, likelihood_weighting=False, eps=1e-5):
  """Denoising score matching over continuous t ~ U(eps, T) (eq. 7).

  Without weighting, lambda(t) = std^2: |s std + z|^2. With likelihood weighting, lambda(t) = g(t)^2
  (Song et al. 2021b): |s + z / std|^2 g^2, which bounds the negative log-likelihood.
  """
  reduce_op = _reduce_fn(reduce_mean)

  def loss_fn(params, images, rng):
    rng_t, rng_z, rng_net = jax.random.split(rng, 3)
    t = jax.random.uniform(rng_t, (images.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(rng_z, images.shape)
    mean, std = sde.marginal_prob(images, t)
    perturbed = mean + _bcast(std, images) * z
    score = score_fn(params, perturbed, t, rng=rng_net)
    if likelihood_weighting:
      g2 = sde.sde(jnp.zeros_like(images), t)[1] ** 2
      losses = reduce_op(jnp.square(score + z / _bcast(std, images))) * g2
    else:
      losses = reduce_op(jnp.square(score * _bcast(std, images) + z))
    return jnp.mean(losses)

  return loss_fn


def get_smld_loss_fn(vesde, model_fn, reduce_mean=False):
  """SMLD (NCSN) loss: sum over noise levels of sigma^2 |s(x + sigma z, i) + z / sigma|^2, i uniform."""
  if vesde.discrete_chain != "smld":
    raise ValueError("The SMLD loss needs training.sde='vesde'.")
  sigmas_desc = jnp.asarray(vesde.discrete_sigmas[::-1].copy())  # label 0 = sigma_max
  reduce_op = _reduce_fn(reduce_mean)

  def loss_fn(params, images, rng):
    rng_label, rng_z, rng_net = jax.random.split(rng, 3)
    labels = jax.random.randint(rng_label, (images.shape[0],), 0, vesde.N)
    sigmas = _bcast(sigmas_desc[labels], images)
    noise = jax.random.normal(rng_z, images.shape) * sigmas
    score = model_fn(params, images + noise, labels, rng_net)
    target = -noise / sigmas ** 2
    losses = reduce_op(jnp.square(score - target)) * sigmas.reshape(-1) ** 2
    return jnp.mean(losses)

  return loss_fn


def get_ddpm_loss_fn(vpsde, model_fn, reduce_mean=True):
  """DDPM's L_simple (DDPM eq. 14): |eps - eps_theta(sqrt(abar) x + sqrt(1 - abar) eps, i)|^2."""
  if vpsde.discrete_chain != "ddpm":
    raise ValueError("The DDPM loss needs training.sde='vpsde' (sub-VP has no discrete chain).")
  sqrt_abar = jnp.asarray(vpsde.sqrt_alphas_cumprod)
  sqrt_1m_abar = jnp.asarray(vpsde.sqrt_1m_alphas_cumprod)
  reduce_op = _reduce_fn(reduce_mean)

  def loss_fn(params, images, rng):
    rng_label, rng_z, rng_net = jax.random.split(rng, 3)
    labels = jax.random.randint(rng_label, (images.shape[0],), 0, vpsde.N)
    noise = jax.random.normal(rng_z, images.shape)
    perturbed = _bcast(sqrt_abar[labels], images) * images + _bcast(sqrt_1m_abar[labels], images) * noise
    eps_pred = model_fn(params, perturbed, labels, rng_net)
    return jnp.mean(reduce_op(jnp.square(eps_pred - noise)))

  return loss_fn


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


# ---------------------------------------------------------------------------------------------------- steps
def get_train_step(loss_fn, optimizer, ema_rate):
  """`train_step(state, batch, rng) -> (state, metrics)`: one Adam update and one EMA update.

  How the network inside `loss_fn` computes is its model's `ops` (`train.train` builds the loss from
  `model.clone(ops=ops.resolve(training.conv_impl, devices))`); the parameters and the math are the same.
  """

  def train_step(state, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch["image"], rng)
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
