"""`--mode train_classifier`: the noise-conditional classifier of class-conditional sampling, trained on noisy
data of the config's SDE (Song et al. 2021, App. I.1), and its loading for `controllable_generation`.

The network is `models.wideresnet.WideResNet` (`config.classifier`). Each training example is a data image
x(0) with its label, perturbed to x(t) ~ p_0t(x(t) | x(0)) at t ~ U(classifier.eps, T) (in model space, after
the data scaler, where the score model samples) and classified given sigma_t, the marginal std at t; the loss
is the cross-entropy. Everything lives in `<workdir>/classifier/` (or `classifier.path`): Orbax checkpoints
with checksums as training's (a snapshot every `snapshot_freq` steps and at the end; a rerun resumes from the
newest), `meta.json` naming the SDE and data the classifier was trained for (a classifier is refused for a
config of another SDE or data), and `accuracy.json`: the test split's accuracy per bucket of t at each eval.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from etils import epath
from flax import traverse_util

from score_sde import checkpointing, config_checks, datasets, files, losses, parallel, settings, train, workdir_config
from score_sde.models.wideresnet import WideResNet

META_FILE = "meta.json"
ACCURACY_FILE = "accuracy.json"

# What a classifier's inputs depend on: the SDE's noise and the data's layout and scaling.
_IDENTITY = ("training.sde", "training.continuous", "model.beta_min", "model.beta_max", "model.sigma_min",
             "model.sigma_max", "model.num_scales", "data.dataset", "data.image_size", "data.num_channels",
             "data.centered", "data.category")


def classifier_dir(config, workdir):
  path = settings.ClassifierSettings.from_config(config).path
  return epath.Path(path) if path else epath.Path(workdir) / "classifier"


def create_classifier(config):
  c = settings.ClassifierSettings.from_config(config)
  return WideResNet(blocks_per_group=c.blocks_per_group, channel_multiplier=c.channel_multiplier,
                    num_classes=c.num_classes, embedding_size=c.embedding_size, fourier_scale=c.fourier_scale)


def identity(config):
  """{key: value} of what the classifier was trained for (`_IDENTITY`, plus the network's own settings)."""
  flat = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
  out = {k: flat[k] for k in _IDENTITY if k in flat}
  c = settings.ClassifierSettings.from_config(config)
  out.update({f"classifier.{k}": getattr(c, k) for k in ("blocks_per_group", "channel_multiplier", "num_classes",
                                                         "embedding_size", "fourier_scale")})
  return out


def _check_identity(config, folder):
  """Refuses a classifier folder whose meta.json names another SDE, data or network; None if it has none."""
  path = folder / META_FILE
  if not path.exists():
    return None
  try:
    stored = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); restore it or train a new classifier.") from e
  diffs = workdir_config.differing(stored, identity(config))
  if diffs:
    raise ValueError(f"the classifier in {folder} was trained for another config ({'; '.join(diffs[:4])}); train "
                     "one for this config (--mode train_classifier) or set classifier.path to one that matches.")
  return stored


def get_classifier_fn(model, sde):
  """`classifier_fn(params, x, t) -> logits (B, K)`: the network given x(t) and sigma_t (sde.marginal_prob)."""

  def classifier_fn(params, x, t):
    sigma = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    return model.apply({"params": params}, x, sigma)

  return classifier_fn


def _optimizer(c):
  return losses.get_optimizer(ml_collections.ConfigDict(dict(
      optimizer="Adam", lr=c.lr, warmup=c.warmup, beta1=0.9, eps=1e-8, weight_decay=0.0, grad_clip=c.grad_clip)))


def _init(config, model, optimizer):
  h, ch = config.data.image_size, config.data.num_channels

  def init(rng):
    params = model.init(rng, jnp.zeros((1, h, h, ch)), jnp.ones((1,)))["params"]
    return losses.create_train_state(params, optimizer)

  return init


def _perturb(sde, rng, x, t):
  mean, std = sde.marginal_prob(x, t)
  return mean + std.reshape((-1,) + (1,) * (x.ndim - 1)) * jax.random.normal(rng, x.shape)


def _bucket_times(sde, eps, buckets, rng, batch):
  """(buckets, batch) times: row b uniform in the b-th of `buckets` equal slices of [eps, T]."""
  u = jax.random.uniform(rng, (buckets, batch))
  return eps + (sde.T - eps) * (jnp.arange(buckets)[:, None] + u) / buckets


def train_classifier(config, workdir):
  """Trains (or resumes) the classifier of `config` in `classifier_dir(config, workdir)`; returns its state."""
  sde, _ = config_checks.validate_config(config)
  c = settings.ClassifierSettings.from_config(config)
  if c.n_iters < 1 or c.batch_size < 1 or c.noise_buckets < 1 or not 0 < c.eps < sde.T:
    raise ValueError(f"classifier: n_iters={c.n_iters}, batch_size={c.batch_size}, noise_buckets={c.noise_buckets} "
                     f"must be >= 1 and eps={c.eps} in (0, T={sde.T}).")
  datasets.check_available(config)  # bad data is refused before anything is written
  folder = classifier_dir(config, workdir)
  is_main = jax.process_index() == 0
  if _check_identity(config, folder) is None and is_main:
    folder.mkdir(parents=True, exist_ok=True)
    files.write_atomically(folder / META_FILE, lambda f: f.write(json.dumps(identity(config), indent=1) + "\n"), "w")
  model, optimizer = create_classifier(config), _optimizer(c)
  mesh = parallel.make_mesh()
  repl, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  init = _init(config, model, optimizer)
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), 7), 3)
  ckpts = checkpointing.Checkpoints(folder)
  state = ckpts.restore_latest(parallel.abstract_with_sharding(jax.eval_shape(init, init_rng), repl))
  if state is None:
    state = jax.jit(init, out_shardings=repl)(init_rng)
  start = int(state.step)
  scaler = datasets.get_data_scaler(config)

  def loss_fn(params, images, labels, rng):
    t_rng, z_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, (images.shape[0],), minval=c.eps, maxval=sde.T)
    logits = get_classifier_fn(model, sde)(params, _perturb(sde, z_rng, scaler(images), t), t)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  def train_step(state, images, labels):
    rng = jax.random.fold_in(train_rng, state.step)
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, images, labels, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema_params, step_size=1.0 - c.ema_rate)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), (loss, accuracy)

  def eval_batch(params, images, labels, mask, rng):
    t = _bucket_times(sde, c.eps, c.noise_buckets, rng, images.shape[0])
    z_rngs = jax.random.split(rng, c.noise_buckets)
    fn = get_classifier_fn(model, sde)
    correct = jax.vmap(lambda t_b, r: (jnp.argmax(fn(params, _perturb(sde, r, scaler(images), t_b), t_b), -1)
                                       == labels) * mask)(t, z_rngs)
    return jnp.sum(correct, axis=1)

  p_step = jax.jit(train_step, in_shardings=(repl, batch_sharding, batch_sharding), out_shardings=(repl, repl),
                   donate_argnums=0)
  p_eval = jax.jit(eval_batch, out_shardings=repl)
  data_config = config.copy_and_resolve_references()
  data_config.training.batch_size = c.batch_size
  pi, pc = jax.process_index(), jax.process_count()
  batches = datasets.train_iterator(data_config, start_step=start, process_index=pi, process_count=pc)
  writer = metric_writers.create_default_writer(os.path.join(str(folder), "tensorboard"), just_logging=not is_main)

  def evaluate(step, params):
    counts, total = np.zeros(c.noise_buckets), 0.0
    for b, batch in enumerate(datasets.eval_iterator(data_config, "test", process_index=pi, process_count=pc)):
      arrays = parallel.global_batch({k: batch[k] for k in ("image", "label", "mask")}, batch_sharding)
      counts += np.asarray(p_eval(params, arrays["image"], arrays["label"], arrays["mask"],
                                  jax.random.fold_in(eval_rng, b)))
      total += float(np.asarray(jax.device_get(jnp.sum(arrays["mask"]))))
    edges = np.linspace(c.eps, sde.T, c.noise_buckets + 1)
    sigmas = [float(sde.marginal_prob(jnp.zeros((1,)), jnp.full((1,), e))[1][0]) for e in edges]
    report = {"step": step, "buckets": [{"t": [float(edges[b]), float(edges[b + 1])],
                                         "sigma": [sigmas[b], sigmas[b + 1]], "accuracy": float(counts[b] / total)}
                                        for b in range(c.noise_buckets)]}
    writer.write_scalars(step, {f"accuracy_bucket_{b}": r["accuracy"] for b, r in enumerate(report["buckets"])})
    if is_main:
      path = folder / ACCURACY_FILE
      history = json.loads(path.read_text()) if path.exists() else []
      files.write_atomically(path, lambda f: f.write(json.dumps(history + [report], indent=1) + "\n"), "w")
    line = ", ".join(f"t {r['t'][0]:.2f}-{r['t'][1]:.2f}: {r['accuracy']:.3f}" for r in report["buckets"])
    print(f"classifier step {step}: test accuracy by noise level: {line}", flush=True)
    return report

  def after_step(done, state, loss, accuracy):
    """Logs, snapshots and evaluates at their frequencies (and at the end)."""
    if done % c.log_freq == 0 or done == c.n_iters:
      loss_, accuracy_ = float(loss), float(accuracy)
      if not math.isfinite(loss_):
        raise FloatingPointError(f"classifier loss is {loss_} at step {done}; lower classifier.lr (nothing was "
                                 "saved for the diverged steps).")
      writer.write_scalars(done, {"loss": loss_, "train_accuracy": accuracy_})
      logging.info("classifier step %d: loss %.4f, noisy train accuracy %.3f", done, loss_, accuracy_)
    if done % c.snapshot_freq == 0 or done == c.n_iters:
      ckpts.save(done, state, snapshot=True)
    if done % c.eval_freq == 0 or done == c.n_iters:
      evaluate(done, state.ema_params)

  preempted = None
  try:
    with train.PreemptionSignal() as preemption:
      for step in range(start, c.n_iters):
        batch = parallel.global_batch(_labelled(next(batches)), batch_sharding)
        state, (loss, accuracy) = p_step(state, batch["image"], batch["label"])
        done = step + 1
        after_step(done, state, loss, accuracy)
        if preemption.requested and done < c.n_iters:  # SIGTERM: save where we are, exit "rerun me"
          ckpts.save(done, state, snapshot=False)
          preempted = done
          break
    if start >= c.n_iters:
      print(f"classifier already trained to step {start} (classifier.n_iters); raise it to train further.")
  finally:
    ckpts.wait()
    ckpts.close()
    writer.flush()
  if preempted is not None:
    raise train.Preempted(preempted)
  return state


def _labelled(batch):
  if "label" not in batch:
    raise ValueError("this data set has no labels: a class-conditional classifier needs a labelled data set.")
  return {"image": batch["image"], "label": batch["label"]}


def load_classifier(config, workdir):
  """(classifier_fn(params, x, t) -> logits, EMA parameters) of the classifier of `config` (see module doc)."""
  sde, _ = config_checks.validate_config(config)
  folder = classifier_dir(config, workdir)
  if _check_identity(config, folder) is None:
    raise checkpointing.CheckpointError(f"no classifier in {folder}: train one with --mode train_classifier (same "
                                        "--config and --workdir), or set classifier.path.")
  model = create_classifier(config)
  init = _init(config, model, _optimizer(settings.ClassifierSettings.from_config(config)))
  repl = parallel.replicated(parallel.make_mesh())
  ckpts = checkpointing.Checkpoints(folder, read_only=True)
  try:
    state = ckpts.restore_latest(parallel.abstract_with_sharding(jax.eval_shape(init, jax.random.PRNGKey(0)), repl))
  finally:
    ckpts.close()
  if state is None:
    raise checkpointing.CheckpointError(f"the classifier in {folder} has no checkpoint yet: let "
                                        "--mode train_classifier write one.")
  return get_classifier_fn(model, sde), state.ema_params
