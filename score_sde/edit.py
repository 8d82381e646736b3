"""`--mode edit`: the controllable-generation tools (`controllable_generation`) and the latent tools (`latents`)
applied with a checkpoint's EMA parameters to real images, in resumable rounds.

`config.edit.task` (`settings.EditSettings`; sampler knobs from `config.sampling`):
  inpaint      fills in the `edit.mask` part of each image (PC inpainter, Song et al. 2021 App. I.2)
  colorize     colours each image's grey version (PC colorizer, App. I.3; 3-channel data only)
  conditional  class-conditional samples of `edit.labels`, guided by the trained noise-conditional classifier
               (`--mode train_classifier`; App. I.1, scale `classifier.guidance_scale`); no input images
  interpolate  slerp between the probability-flow latents of image i and image i + 1 of the round (the last
               pairs with the first; a round of one, with itself), decoded at `edit.num_interpolations`
               points, both ends included (§4.3)
  progressive  the eq. 15 x0 predictions of ancestral sampling along the DDPM chain (Ho et al. 2020 fig. 6;
               VP only); no input images
  encode       each image's probability-flow latent z = encode(x) and its decode decode(z) (§4.3)
inpaint, colorize and conditional use the PC sampler's `sampling.predictor`, `corrector`, `snr`,
`n_steps_each`, `probability_flow` and `noise_removal`; interpolate and encode the flow solver
`sampling.ode_method` / `ode_rtol` / `ode_atol` (no denoising step, so decode inverts encode).

Inputs (`edit.input`, `edit_inputs`) are the first `edit.num_images` images of the data set's test split ('' or
'test'), its train split ('train') or a folder of PNG files, as uint8; the data scaler takes them into model
space and the inverse scaler brings results back, rounded to the nearest uint8 level. (`--mode sample` keeps
the 2021 truncation, which FID is computed with; an edit's results are compared with its inputs, and
truncation would move known pixels a level down wherever float rounding leaves them a hair below.)

Files: `<workdir>/<eval_folder>/edit/step_<s>/<task>-<digest>/`, the digest (`work_keys`, `key.json`) of the
checkpoint, model, SDE, data, seed and the settings this task reads (a folder input by its files' digest;
conditional also by the classifier's parameters). Round r holds images r * B .. r * B + B - 1 (B =
`edit.batch_size`), drawn with rng fold_in(PRNGKey(seed), r): `round_<r>.png`, a grid with one row per image,
and `round_<r>.npz` (uint8 unless noted), written last as the round's done marker (n images, K points):
  inpaint      inputs, masks (1 known, 0 filled in), outputs     row: input | masked input (grey: filled in) | output
  colorize     inputs, grey, outputs                             row: input | grey | output
  conditional  labels (int32), outputs                           a row per label: its samples in the round
  interpolate  inputs, pairs (int32 image numbers), outputs (n, K, ...)   row: image i | K decodes | image j
  progressive  outputs (n, K, ...): x0 predictions; chain (n, K + 1, ...): x_t, then x_0   row: the predictions
  encode       inputs, latents (float32), outputs                row: input | latent (min-max scaled) | output
A finished round (its npz holds the images this run wants there) is never redone; a run with other settings
writes into a folder of its own.

On several processes (`--distributed`) every process reads the same inputs, each round's batch is split over
all devices (when edit.batch_size divides evenly over them), and process 0 writes the rounds.
"""
import json
import math
import time

import jax
import numpy as np
from etils import epath
import tqdm

from score_sde import (classifier_training, config_checks, controllable_generation, correctors, datasets,
                       edit_inputs, files, flow, image_utils, latents, parallel, predictors, settings, train_state,
                       work_keys)
from score_sde.models import utils as mutils

TASKS = ("inpaint", "colorize", "conditional", "interpolate", "progressive", "encode")
WITH_INPUTS = ("inpaint", "colorize", "interpolate", "encode")
PC_FIELDS = ("predictor", "corrector", "snr", "n_steps_each", "probability_flow", "noise_removal")
FLOW_FIELDS = ("ode_method", "ode_rtol", "ode_atol")
_SAMPLING_FIELDS = {"inpaint": PC_FIELDS, "colorize": PC_FIELDS, "conditional": PC_FIELDS,
                    "interpolate": FLOW_FIELDS, "encode": FLOW_FIELDS, "progressive": ()}

# The compiled tools of recent runs in this process, by what they are built from (the config less its `edit`
# section, the tool, the batch shape): a second run of the same model in one process (a test, a notebook, the
# next round of settings) reuses them instead of compiling again. The oldest are dropped past _CACHE_SIZE.
_BUILT = {}
_CACHE_SIZE = 8


def check_request(config, sde, e):
  """The task's own settings as key entries {'edit.<name>': value}; a one-line ValueError for bad ones."""
  if e.task not in TASKS:
    raise ValueError(f"edit.task={e.task!r} is not one of {list(TASKS)}.")
  if e.num_images < 1 or e.batch_size < 1:
    raise ValueError(f"edit.num_images={e.num_images} and edit.batch_size={e.batch_size} must be >= 1.")
  s = settings.SamplingSettings.from_config(config)
  if _SAMPLING_FIELDS[e.task] == PC_FIELDS:
    predictors.get_predictor(s.predictor)  # known names, or a one-line error
    correctors.get_corrector(s.corrector)
  elif _SAMPLING_FIELDS[e.task] == FLOW_FIELDS:
    flow.solver(s.ode_method)
  own = {"edit.task": e.task, "edit.batch_size": e.batch_size}
  if e.task in WITH_INPUTS:
    where = edit_inputs.describe_input(e.input)
    if where not in edit_inputs.SPLITS:
      edit_inputs.png_files(where)  # missing or empty: fail here
  if e.task == "inpaint":
    edit_inputs.check_mask(e.mask, e.mask_fraction)
    own["edit.mask"] = e.mask
    if e.mask == "random":
      own["edit.mask_fraction"] = e.mask_fraction
  elif e.task == "colorize" and config.data.num_channels != 3:
    raise ValueError(f"edit.task='colorize' needs colour images; data.num_channels={config.data.num_channels}.")
  elif e.task == "conditional":
    num_classes = settings.ClassifierSettings.from_config(config).num_classes
    own["edit.labels"] = edit_inputs.parse_labels(e.labels, num_classes)
  elif e.task == "interpolate":
    if e.num_interpolations < 2:
      raise ValueError(f"edit.num_interpolations={e.num_interpolations} must be >= 2 (both ends included).")
    own["edit.num_interpolations"] = e.num_interpolations
  elif e.task == "progressive":
    if getattr(sde, "discrete_chain", None) != "ddpm":
      raise ValueError(f"edit.task='progressive' follows the DDPM chain of the VP SDE; training.sde="
                       f"{config.training.sde!r} has none.")
    latents.record_steps(sde, e.num_records)
    own["edit.num_records"] = e.num_records
  return own


class _Task:
  """What every task builder gets: the config's SDE, scores, shapes and scalers, and the edit settings."""

  def __init__(self, config, sde, model, e, mesh, labels=None, classifier_fn=None):
    self.config, self.sde, self.e, self.labels, self.classifier_fn = config, sde, e, labels, classifier_fn
    self.mesh = mesh
    self.s = settings.SamplingSettings.from_config(config)
    continuous = settings.TrainingSettings.from_config(config).continuous
    self.score_fn = mutils.get_score_fn(sde, model, continuous=continuous)
    self.flow_score_fn = mutils.get_score_fn(sde, model, continuous=continuous, probability_flow=True)
    h, c = config.data.image_size, config.data.num_channels
    self.shape = (e.batch_size, h, h, c)
    self.scaler, self.inverse = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
    self.eps = sde.default_sampling_eps
    flat = json.loads(config.to_json_best_effort())
    flat.pop("edit", None)
    self.identity = json.dumps(flat, sort_keys=True, default=str)

  def built(self, name, build, *extra):
    """`build()`, or what it returned for the same config, tool `name`, batch shape and `extra` before."""
    key = (self.identity, name, self.shape) + extra
    if key not in _BUILT:
      while len(_BUILT) >= _CACHE_SIZE:
        _BUILT.pop(next(iter(_BUILT)))
      _BUILT[key] = build()
    return _BUILT[key]

  def pc_args(self):
    s = self.s
    return dict(predictor=s.predictor, corrector=s.corrector, inverse_scaler=self.inverse, snr=s.snr,
                n_steps=s.n_steps_each, probability_flow=s.probability_flow, denoise=s.noise_removal, eps=self.eps)

  def flow_maps(self):
    s = self.s
    args = dict(rtol=s.ode_rtol, atol=s.ode_atol, method=s.ode_method, eps=self.eps)
    return self.built("flow", lambda: (latents.get_encoder(self.sde, self.flow_score_fn, **args),
                                       latents.get_decoder(self.sde, self.flow_score_fn, **args)))

  def put(self, x):
    """A host array every process holds -> on the mesh, the batch split over its devices (`parallel.put_batch`)."""
    return parallel.put_batch(x, self.mesh)

  def model_space(self, images):
    """uint8 (n, ...) -> the scaled batch (B, ...) on the mesh, zero images padding it to the round's size."""
    x = np.zeros(self.shape, np.float32)
    x[:len(images)] = np.asarray(images, np.float32) / 255.0
    return self.put(self.scaler(x))


def _u8(x):
  return image_utils.to_uint8(parallel.to_host(x), rounding=True)


def _inpaint(t):
  inpaint = t.built("inpaint", lambda: controllable_generation.get_pc_inpainter(t.sde, t.score_fn,
                                                                              **t.pc_args()))
  h = t.shape[1]

  def run(rng, params, images, _):
    mask_rng, rng = jax.random.split(rng)
    masks = np.asarray(edit_inputs.make_masks(t.e.mask, t.e.mask_fraction, t.shape[0], h, mask_rng))
    out, n = _u8(inpaint(rng, params, t.model_space(images), t.put(masks))), len(images)
    masks = np.asarray(masks[:n], np.uint8)
    shown = np.where(masks == 1, images, np.uint8(128))  # what is kept; mid-grey where it is filled in
    return {"inputs": images, "masks": masks, "outputs": out[:n]}, [list(row) for row in zip(images, shown, out)]

  return run


def _colorize(t):
  colorize = t.built("colorize", lambda: controllable_generation.get_pc_colorizer(t.sde, t.score_fn,
                                                                                **t.pc_args()))

  def run(rng, params, images, _):
    grey = np.repeat(np.mean(np.asarray(images, np.float32), axis=-1, keepdims=True), 3, axis=-1)
    x = np.zeros(t.shape, np.float32)
    x[:len(images)] = grey / 255.0
    out, n, grey = _u8(colorize(rng, params, t.put(t.scaler(x)))), len(images), _u8(grey / 255.0)
    return {"inputs": images, "grey": grey[..., :1], "outputs": out[:n]}, [list(r) for r in zip(images, grey, out)]

  return run


def _conditional(t, classifier_params):
  scale = settings.ClassifierSettings.from_config(t.config).guidance_scale  # (in the config: part of the key)
  sample = t.built("conditional", lambda: controllable_generation.get_pc_conditional_sampler(
      t.sde, t.score_fn, t.classifier_fn, t.shape, guidance_scale=scale, **t.pc_args()))
  b, k = t.shape[0], len(t.labels)

  def run(rng, params, n, r):
    labels = np.asarray([t.labels[(r * b + j) % k] for j in range(b)], np.int32)
    out = _u8(sample(rng, params, classifier_params, t.put(labels)))[:n]
    rows = [[x for x, y in zip(out, labels[:n]) if y == label] for label in t.labels]
    return {"labels": labels[:n], "outputs": out}, [row for row in rows if row]

  return run


def _interpolate(t):
  encode, decode = t.flow_maps()
  alphas = np.linspace(0.0, 1.0, t.e.num_interpolations)

  def run(_, params, images, r):
    n = len(images)
    z = encode(params, t.model_space(images))
    partner = np.arange(t.shape[0])
    partner[:n] = (np.arange(n) + 1) % n
    paths = latents.slerp(z, z[partner], alphas)  # (K, B, ...)
    out = np.stack([_u8(t.inverse(decode(params, path)))[:n] for path in paths], axis=1)  # (n, K, ...)
    pairs = np.stack([np.arange(n), partner[:n]], axis=1) + r * t.shape[0]
    rows = [[images[i], *out[i], images[partner[i]]] for i in range(n)]
    return {"inputs": images, "pairs": pairs.astype(np.int32), "outputs": out}, rows

  return run


def _progressive(t):
  generate = t.built("progressive", lambda: latents.get_progressive_generation(t.sde, t.score_fn, t.shape,
                                                                               t.e.num_records, t.eps),
                     t.e.num_records)

  def run(rng, params, n, _):
    chain, x0_hat = generate(rng, params)
    chain, x0_hat = (np.moveaxis(_u8(t.inverse(v)), 0, 1)[:n] for v in (chain, x0_hat))
    return {"outputs": x0_hat, "chain": chain}, [list(row) for row in x0_hat]

  return run


def _encode(t):
  encode, decode = t.flow_maps()

  def run(_, params, images, __):
    n = len(images)
    z = encode(params, t.model_space(images))
    out = _u8(t.inverse(decode(params, z)))[:n]
    z = parallel.to_host(z)[:n].astype(np.float32)
    low, high = z.min(axis=(1, 2, 3), keepdims=True), z.max(axis=(1, 2, 3), keepdims=True)
    shown = _u8((z - low) / np.maximum(high - low, 1e-12))
    return {"inputs": images, "latents": z, "outputs": out}, [list(r) for r in zip(images, shown, out)]

  return run


def edit(config, workdir, eval_folder="eval"):
  """Runs `config.edit.task` (module docstring) on the newest checkpoint of `workdir` (or `eval.ckpt_id`,
  `eval.pretrained`); returns the folder the rounds are in."""
  start = time.perf_counter()
  sde, model = config_checks.validate_config(config)
  e = settings.EditSettings.from_config(config)
  own = check_request(config, sde, e)
  images, count = None, e.num_images
  if e.task in WITH_INPUTS:
    images, input_key = edit_inputs.read_inputs(config, e.input, e.num_images)
    own.update(input_key)
    count = len(images)
  classifier_params = None
  mesh = parallel.make_mesh()
  if e.task == "conditional":
    classifier_fn, classifier_params = classifier_training.load_classifier(config, workdir)
    classifier_params = jax.device_put(classifier_params, parallel.replicated(mesh))
    task = _Task(config, sde, model, e, mesh, own["edit.labels"], classifier_fn)
    run = _conditional(task, classifier_params)
    own.update({k: v for k, v in classifier_training.identity(config).items() if k.startswith("classifier.")})
    own["classifier.guidance_scale"] = settings.ClassifierSettings.from_config(config).guidance_scale
    own["classifier.params"] = work_keys.params_digest(classifier_params)
  else:
    task = _Task(config, sde, model, e, mesh)
    run = {"inpaint": _inpaint, "colorize": _colorize, "interpolate": _interpolate, "progressive": _progressive,
           "encode": _encode}[e.task](task)
  step, params = train_state.restore_ema_params(config, workdir, model, mesh)
  key = work_keys.work_key(config, step, work_keys.params_digest(params))
  key = {k: v for k, v in key.items() if not k.startswith(("edit.", "classifier."))}
  s = settings.SamplingSettings.from_config(config)
  key.update({f"sampling.{name}": getattr(s, name) for name in _SAMPLING_FIELDS[e.task]})
  key.update(own)
  folder = work_keys.unit_folder(epath.Path(workdir) / eval_folder / "edit" / f"step_{step}", e.task, key)
  batch, base_rng = e.batch_size, jax.random.PRNGKey(config.seed)
  rounds, done, is_main = math.ceil(count / batch), 0, jax.process_index() == 0
  for r in tqdm.trange(rounds, desc=f"edit {e.task} step {step}", disable=not is_main):
    path = folder / f"round_{r}.npz"
    wanted = min(batch, count - r * batch)
    # Finished before an interruption: never redone (process 0's view decides, so all processes join or none).
    if parallel.process0_decides(path.exists() and len(files.load_npz(path)["outputs"]) == wanted):
      done += 1
      continue
    part = images[r * batch:r * batch + wanted] if images is not None else wanted
    arrays, rows = run(jax.random.fold_in(base_rng, r), params, part, r)
    if not is_main:
      continue
    # The npz is the round's 'done' marker, so it is written last.
    scale = max(1, 32 // task.shape[1])
    files.write_atomically(folder / f"round_{r}.png", lambda f, rows=rows: image_utils.save_rows(rows, f, scale))
    files.write_atomically(path, lambda f, arrays=arrays: np.savez_compressed(f, **arrays))
  what = f"{count} {'input images' if images is not None else 'samples'}"
  if is_main:
    print(f"edit {e.task}: {what} from step {step} in {rounds} round{'s' * (rounds != 1)} ({done} already done) "
          f"-> {folder} ({time.perf_counter() - start:.1f} s)")
  return folder
