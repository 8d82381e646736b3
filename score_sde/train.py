"""Training loop: `train(config, workdir)` trains, checkpoints, logs and samples; it resumes by itself.

Sections: checks -> mesh -> model and state -> input -> compiled steps -> loop (log, eval, checkpoint,
snapshot samples). The rng of step s is fold_in(seed rng, s) and the input of step s is a pure function of
(seed, s), so a run killed and restarted continues exactly where it stopped.
"""
import glob
import os
import queue
import signal
import threading
import time

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from clu import metric_writers
from clu import periodic_actions

from score_sde import (checkpointing, config_checks, datasets, files, image_utils, losses, parallel, sampling,
                       settings, train_state, workdir_config)
from score_sde.models import ops as ops_lib
from score_sde.models import utils as mutils


class NonFiniteLossError(FloatingPointError):
  """Training diverged; raised before anything is written for the diverged steps."""


class Preempted(Exception):
  """SIGTERM stopped training after its checkpoint was saved (and finished writing): rerun to resume.

  `main.py` exits with `EXIT_STATUS`, 128 + SIGTERM as a shell reports a job a SIGTERM ended, so that a
  scheduler sees "stopped, not finished" and requeues it (`launch/README.md`).
  """
  EXIT_STATUS = 128 + signal.SIGTERM

  def __init__(self, step):
    super().__init__(f"preempted (SIGTERM): checkpoint saved at step {step}; rerun the same command to resume.")
    self.step = step


# ----------------------------------------------------------------------------------------------------- checks
def check_training_config(config):
  t = config.training
  n = t.n_jitted_steps
  if n < 1:
    raise ValueError(f"training.n_jitted_steps={n} must be >= 1.")
  for key in ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
    value = t[key]
    if value < 1 or value % n:
      raise ValueError(f"training.{key}={value} must be a positive multiple of training.n_jitted_steps={n} "
                       "(events happen between compiled chunks of steps).")
  if t.n_iters < 1:
    raise ValueError(f"training.n_iters={t.n_iters} must be >= 1.")
  chunk_loop(settings.TrainingSettings.from_config(config).chunk_loop)


CHUNK_LOOPS = ("auto", "scan", "unroll")


def chunk_loop(setting, backend=None):
  """How one compiled call runs its chunk of `n_jitted_steps` train steps: "scan" or "unroll".

  "scan" is `lax.scan` over the chunk, the step traced once: what TPUs and GPUs run (the 2021 code's
  `jax.lax.scan` inside `pmap`). "unroll" traces the step once per batch of the chunk into one program: XLA:CPU
  runs a train step inside a while loop (or on a dynamically sliced batch) many times slower than the same step
  unrolled, so "auto" unrolls on the CPU backend only. Both compute the same steps (tests/test_chunk_loop.py).
  """
  if setting not in CHUNK_LOOPS:
    raise ValueError(f"training.chunk_loop={setting!r} is not one of {list(CHUNK_LOOPS)}.")
  if setting != "auto":
    return setting
  return "unroll" if (backend or jax.default_backend()) == "cpu" else "scan"


def _crossed(before, after, every):
  """Whether a multiple of `every` lies in (before, after]."""
  return after // every > before // every


# ------------------------------------------------------------------------------------------------------ input
def _chunk_sizes(start, stop, n):
  step = start
  while step < stop:
    k = min(n, stop - step)
    yield k
    step += k


def _prefetched_chunks(iterator, sizes, sharding, depth=2):
  """Stacks k batches per compiled call and assembles them as global sharded arrays, one chunk ahead.

  A background thread does the host work (reading, stacking, host-to-device copies), so the compiled step
  never waits on input.
  """
  out = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    try:
      for k in sizes:
        batches = [next(iterator)["image"] for _ in range(k)]
        out.put(parallel.global_batch({"image": np.stack(batches)}, sharding, batch_axis=1))
        if stop.is_set():
          return
      out.put(None)
    except BaseException as e:  # pylint: disable=broad-except
      out.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = out.get()
      if item is None:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


# ------------------------------------------------------------------------------------------------------- loop
class PreemptionSignal:
  """SIGTERM sets a flag; the loop saves a checkpoint at the next chunk boundary and exits."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(pending):
  """Host-syncs the metrics of the chunks since the last check; raises on the first non-finite step."""
  losses_all = []
  for first_step, metrics in pending:
    loss = np.asarray(metrics["loss"])
    grad_norm = np.asarray(metrics["grad_norm"])
    bad = ~(np.isfinite(loss) & np.isfinite(grad_norm))
    if bad.any():
      i = int(np.argmax(bad))
      raise NonFiniteLossError(
          f"non-finite training loss ({loss[i]}) or gradient norm ({grad_norm[i]}) at step {first_step + i + 1}; "
          "training stopped and nothing was saved for it (the last checkpoint is intact). Lower optim.lr, "
          "keep optim.grad_clip >= 0, or check the data.")
    losses_all.append(loss)
  pending.clear()
  return float(np.mean(np.concatenate(losses_all))) if losses_all else None


def train(config, workdir):
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final train state."""
  sde, model = config_checks.validate_config(config)
  check_training_config(config)
  t = settings.TrainingSettings.from_config(config)
  h, w, c = config.data.image_size, config.data.image_size, config.data.num_channels
  is_main = jax.process_index() == 0
  datasets.check_available(config)  # bad data is refused before the workdir is touched
  if t.init_from and not any((epath.Path(workdir) / d).exists() for d in ("checkpoints", "checkpoints-meta")):
    from score_sde import pretrained  # pylint: disable=g-import-not-at-top
    pretrained.detect_format(t.init_from)  # a missing or foreign file is refused before the workdir is touched
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local or gs:// (TPU pods write to a bucket)

  # ---- mesh: batch over every device, parameters replicated
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  chunk_sharding = parallel.batch_sharding(mesh, leading_axes=1)

  # ---- model and state (restored if a checkpoint exists)
  optimizer = losses.get_optimizer(config.optim)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng, eval_rng, sample_rng = jax.random.split(rng, 4)
  checkpoints = checkpointing.Checkpoints(workdir)
  state = checkpoints.restore_latest(train_state.abstract_train_state(config, model, repl, optimizer))
  if state is not None:  # the run in this workdir continues only as the same run (its config.json)
    workdir_config.check(config, workdir)
    if int(state.step) > t.n_iters:
      checkpoints.close()
      raise ValueError(f"--workdir={workdir} is at step {int(state.step)}, past training.n_iters={t.n_iters}: raise "
                       "training.n_iters to train further (nothing was changed).")
    if is_main:  # the keys that may change (n_iters, frequencies) as this run has them, for eval to read
      workdir_config.record(config, workdir)
  elif is_main:
    workdir_config.record(config, workdir)
  if state is None and t.init_from:
    # Start (or fine-tune) from a released / other checkpoint; once this workdir has its own, those win.
    from score_sde import pretrained  # pylint: disable=g-import-not-at-top
    state = jax.device_put(pretrained.load_train_state(t.init_from, config), repl)
    logging.info("Initialised from %s (%s) at step %d.", t.init_from, pretrained.detect_format(t.init_from),
                 int(state.step))
  if state is None:
    state = train_state.init_train_state(config, model, init_rng, repl, optimizer)
  initial_step = int(state.step)
  if initial_step == t.n_iters:
    logging.info("Training already finished: step %d of %d in %s.", initial_step, t.n_iters, workdir)
    print(f"training already finished at step {initial_step} (training.n_iters); raise training.n_iters to train "
          "further.")
  logging.info("Parameters: %d; starting at step %d of %d.", mutils.count_params(state.params), initial_step,
               t.n_iters)

  # ---- compiled steps
  scaler = datasets.get_data_scaler(config)
  # The loss the train step differentiates computes with training.conv_impl's ops; eval, sampling and
  # likelihoods keep the model's own (ops.XLA).
  train_ops = ops_lib.resolve(t.conv_impl, mesh.devices.flat)
  train_model = ops_lib.with_ops(model, train_ops)
  logging.info("Train-step ops: %s.", train_ops.name if train_model is not model else ops_lib.XLA.name)
  # It is also rematerialised and cast as training.remat / training.compute_dtype say, and averaged over
  # training.grad_accum_steps micro-batches (losses.get_train_step_from_config).
  train_step = losses.get_train_step_from_config(config, sde, train_model, optimizer)
  eval_step = losses.get_eval_step(losses.get_loss_fn_from_config(config, sde, model, train=False))

  unroll_chunks = chunk_loop(t.chunk_loop) == "unroll"

  def body(state, images):
    return train_step(state, {"image": scaler(images)}, jax.random.fold_in(train_rng, state.step))

  def run_chunk(state, batches):
    if not unroll_chunks:
      return jax.lax.scan(body, state, batches["image"])
    metrics = []
    for images in batches["image"]:  # static slices, traced k times into the one compiled call
      state, m = body(state, images)
      metrics.append(m)
    return state, jax.tree_util.tree_map(lambda *m: jnp.stack(m), *metrics)

  def run_eval(state, batch):
    return eval_step(state, {"image": scaler(batch["image"])}, jax.random.fold_in(eval_rng, state.step))[1]

  p_train = jax.jit(run_chunk, in_shardings=(repl, chunk_sharding), out_shardings=(repl, repl), donate_argnums=0)
  p_eval = jax.jit(run_eval, in_shardings=(repl, parallel.batch_sharding(mesh)), out_shardings=repl)
  sample_fn = None
  if t.snapshot_sampling:
    sample_shape = (t.batch_size, h, w, c)
    score_fn = mutils.get_score_fn(sde, model, continuous=t.continuous,
                                   probability_flow=sampling.uses_probability_flow(config))
    sampler = sampling.get_sampling_fn(config, sde, score_fn, sample_shape,
                                       datasets.get_data_inverse_scaler(config), sde.default_sampling_eps,
                                       sharding=parallel.sampler_sharding(mesh))
    sample_fn = jax.jit(lambda key, params: sampler(key, params)[0], out_shardings=parallel.batch_sharding(mesh))

  # ---- input
  pc, pi = jax.process_count(), jax.process_index()
  train_iter = datasets.train_iterator(config, start_step=initial_step, process_index=pi, process_count=pc)
  # One eval batch per eval_freq steps: a resumed run continues the eval stream where it stopped, so its eval
  # losses are the ones the uninterrupted run logs.
  eval_iter = datasets.eval_iterator(config, "test", process_index=pi, process_count=pc, repeat=True,
                                     batch_size=t.batch_size, start_batch=initial_step // t.eval_freq)
  chunks = _prefetched_chunks(train_iter, _chunk_sizes(initial_step, t.n_iters, t.n_jitted_steps), chunk_sharding)

  # ---- logging
  writer = metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"), just_logging=not is_main)
  report_progress = periodic_actions.ReportProgress(num_train_steps=t.n_iters, writer=writer)

  def samples_folder(step):
    return epath.Path(workdir) / "samples" / f"iter_{step}"

  def write_samples(step, params):
    samples = sample_fn(jax.random.fold_in(sample_rng, step), params)
    samples = np.asarray(multihost_utils.process_allgather(samples, tiled=True))
    if is_main:
      folder = samples_folder(step)
      folder.mkdir(parents=True, exist_ok=True)
      images = image_utils.to_uint8(samples)
      # The npz marks the grid done (see the resume below), so it is written last; both atomically.
      scale = 4 if h <= 32 else 1
      files.write_atomically(folder / "samples.png", lambda f: image_utils.save_grid(images, f, scale=scale))
      files.write_atomically(folder / "samples.npz", lambda f: np.savez_compressed(f, samples=images))
      writer.write_images(step, {"samples": image_utils.make_grid(images)[None]})
      logging.info("Step %d: samples written to %s", step, folder)

  # Killed between a snapshot and its samples: the samples of the checkpoint resumed from are drawn now (from
  # the same rng, so they are the images the uninterrupted run wrote).
  missing = (sample_fn is not None and initial_step in checkpoints.snapshots.all_steps()
             and not (samples_folder(initial_step) / "samples.npz").exists())
  # Process 0's view decides, so that every process joins the sampler's collectives or none does.
  missing = parallel.process0_decides(missing)
  if missing:
    logging.info("Step %d: its snapshot's samples are missing; drawing them.", initial_step)
    write_samples(initial_step, state.ema_params)

  # ---- loop
  step, pending = initial_step, []
  last_log = None  # (step, time) at the previous log's host sync: wall time per step between logs

  with PreemptionSignal() as preemption:
    try:
      for batches in chunks:
        state, metrics = p_train(state, batches)
        k = int(metrics["loss"].shape[0])
        new_step = step + k
        pending.append((step, metrics))
        report_progress(new_step)
        last = new_step == t.n_iters
        if _crossed(step, new_step, t.log_freq) or last:
          scalars = {"train_loss": _check_finite(pending)}  # the loop's only host sync besides eval/saves
          now = time.perf_counter()
          if last_log is not None:  # the first interval includes compilation
            scalars["wall_ms_per_step"] = 1e3 * (now - last_log[1]) / (new_step - last_log[0])
          last_log = (new_step, now)
          writer.write_scalars(new_step, scalars)
        if _crossed(step, new_step, t.eval_freq):
          eval_batch = parallel.global_batch({"image": next(eval_iter)["image"]}, parallel.batch_sharding(mesh))
          writer.write_scalars(new_step, {"eval_loss": float(p_eval(state, eval_batch)["loss"])})
        snapshot = _crossed(step, new_step, t.snapshot_freq) or last
        preempt_save = _crossed(step, new_step, t.snapshot_freq_for_preemption) or preemption.requested
        if snapshot or preempt_save:
          _check_finite(pending)  # never write a checkpoint of diverged parameters
          checkpoints.save(new_step, state, snapshot=snapshot)
          if snapshot and sample_fn is not None:
            write_samples(new_step, state.ema_params)
        step = new_step
        if preemption.requested:
          logging.warning("SIGTERM: checkpoint saved at step %d; exiting.", step)
          break
    finally:
      checkpoints.wait()
      checkpoints.close()
      writer.flush()
  if preemption.requested and step < t.n_iters:
    raise Preempted(step)
  return state


def logged_tags(workdir):
  """{(step, tag)} of everything (scalars, images) written to `<workdir>/tensorboard`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {(event.step, value.tag) for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
          for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}


def logged_scalars(workdir, tag):
  """{step: value} of one scalar `train` wrote to `<workdir>/tensorboard` (e.g. "train_loss", "eval_loss",
  "wall_ms_per_step")."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = {}
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values
