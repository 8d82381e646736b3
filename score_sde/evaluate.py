"""`--mode eval`: loss, bits/dim (probability flow), the DDPM variational bound and FID/IS/KID of checkpoints.

For each checkpoint from `eval.begin_ckpt` to `eval.end_ckpt` (checkpoint k is the snapshot at step
k * training.snapshot_freq, the 2021 numbering; one not yet written is waited for, so eval can run beside
training), with the EMA parameters, whichever of these are enabled:

  enable_loss      the training loss on the test split (full batches)
  enable_bpd       NLL in bits/dim by the probability-flow ODE on `bpd_dataset` (`bpd_passes`: bpd_num_repeats
                   passes over the test split, each with fresh uniform dequantisation; one over train)
  enable_vlb       the DDPM discrete variational bound (Ho et al. eq. 5 with the eq. 13 decoder) on the test split,
                   the x0 prediction clipped to the data range as in the DDPM code (eval.vlb_clip_denoised)
  enable_sampling  `num_samples` samples in rounds of eval.batch_size; their features give FID / IS / KID
                   against the dataset's reference statistics (`--mode stats` writes them)

Everything is written under `<workdir>/<eval_folder>/ckpt_<step>/`: one npz per finished unit of work (a loss
batch set, a bpd or VLB batch, a sampling round), each metric's units in a folder `<metric>-<digest>/` named by
everything that determines them (`work_keys`: the checkpoint's parameters, model, SDE, data, seed, batch size
and the metric's own settings; `key.json` there). A unit already on disk is never redone, so an eval killed at
any point and restarted skips straight to the first missing unit and produces the same report, while an eval
with other settings computes into folders of its own. Each checkpoint's `report.json` (+ `report.npz`) merges
the metrics of every eval run on it (the newest run's value where two computed the same metric; the units
folder of each metric is named beside it), `history.jsonl` there keeps every run's report as it was, and
`<eval_folder>/report.md` lists all checkpoints.
"""
import dataclasses
import json
import math
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils
import tqdm

from score_sde import (config_checks, datasets, files, image_utils, losses, parallel, sampling, settings,
                       train_state, work_keys)
from score_sde.checkpoint_wait import checkpoint_steps, wait_for_checkpoint
from score_sde.models import utils as mutils

# ------------------------------------------------------------------------------------------ resumable units
def _save_npz(path, arrays):
  """Writes `path` atomically (tmp file, then rename): a unit on disk is always complete."""
  if jax.process_index() == 0:
    files.save_npz(path, arrays)


def _unit(path, compute, complete=lambda arrays: True):
  """The arrays of a finished unit of work: loaded if `path` exists and holds a `complete` unit, else computed
  and saved (by process 0; whether it is there is process 0's view, so every process computes it or none)."""
  arrays = files.load_npz(path) if path.exists() else None
  if parallel.process0_decides(arrays is not None and bool(complete(arrays))):
    return (arrays if arrays is not None else files.load_npz(path)), False
  arrays = {k: np.asarray(v) for k, v in compute().items()}
  _save_npz(path, arrays)
  return arrays, True


def _gather(x):
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _features(feature_fn, images):
  """`feature_fn(images)` with each process computing the features of its share of the rows, gathered in row
  order on every process (every process holds all of `images`)."""
  pc, pi = jax.process_count(), jax.process_index()
  if pc == 1:
    return feature_fn(images)
  per = math.ceil(len(images) / pc)
  part = images[pi * per:(pi + 1) * per]
  part = np.concatenate([part, np.zeros((per - len(part),) + images.shape[1:], images.dtype)])  # equal shares
  return {k: _gather(v)[:len(images)] for k, v in feature_fn(part).items()}


# ------------------------------------------------------------------------------------------------ evaluators
class _Context:
  """What every evaluator of one config needs, built once for all checkpoints."""

  def __init__(self, config, workdir, eval_folder):
    self.config = config
    self.eval = settings.EvalSettings.from_config(config)
    self.sde, self.model = config_checks.validate_config(config)
    self.mesh = parallel.make_mesh()
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    self.repl = parallel.replicated(self.mesh)
    self.scaler = datasets.get_data_scaler(config)
    self.inverse_scaler = datasets.get_data_inverse_scaler(config)
    self.workdir = workdir
    self.eval_dir = epath.Path(workdir) / eval_folder
    self.is_main = jax.process_index() == 0
    self.pi, self.pc = jax.process_index(), jax.process_count()
    h, c = config.data.image_size, config.data.num_channels
    self.image_shape = (h, h, c)
    continuous = config.training.continuous
    # The training convention (loss, VLB), the probability flow's (bits/dim) and the sampler's (either).
    self.score_fn = mutils.get_score_fn(self.sde, self.model, continuous=continuous)
    self.flow_score_fn = mutils.get_score_fn(self.sde, self.model, continuous=continuous, probability_flow=True)
    self.sampler_score_fn = self.flow_score_fn if sampling.uses_probability_flow(config) else self.score_fn

  def global_batch(self, images):
    return parallel.global_batch({"image": images}, self.batch_sharding)["image"]

  def rng(self, *path):
    key = jax.random.PRNGKey(self.config.seed)
    for p in path:
      key = jax.random.fold_in(key, p)
    return key

  def units(self, ckpt, kind, eval_keys, with_sampling=False):
    """The folder of `kind`'s units for `ckpt`, named by what determines them (`work_keys`)."""
    key = work_keys.work_key(self.config, ckpt.step, ckpt.digest, eval_keys=("batch_size",) + tuple(eval_keys),
                             with_sampling=with_sampling)
    return work_keys.unit_folder(ckpt.out, kind, key)


@dataclasses.dataclass(frozen=True)
class _Checkpoint:
  """One checkpoint under evaluation: its step, EMA parameters, their digest, and its output folder."""
  step: int
  params: Any
  digest: str
  out: epath.Path


def _batches(ctx, split, dequantize, pass_index, start_batch):
  return datasets.eval_iterator(ctx.config, split, process_index=ctx.pi, process_count=ctx.pc,
                                dequantize=dequantize, pass_index=pass_index, start_batch=start_batch)


def _first_missing(folder, names):
  """The index of the first of `names` not in `folder` (process 0's view, on every process)."""
  first = next((i for i, name in enumerate(names) if not (folder / name).exists()), len(names))
  return parallel.process0_decides(first)


# Each evaluator is built once per eval (`make_*(ctx)`: checks its config, compiles nothing yet, loads what it
# needs once) and then run per checkpoint (`run(params, step, out) -> report entries`), so its jitted functions
# compile once for the whole checkpoint range.
def make_loss_eval(ctx):
  """Mean training loss of the EMA parameters over the test split's full batches (padding would bias it), on
  data dequantised exactly when training's is (config.data.uniform_dequantization), as in 2021."""
  config = ctx.config
  loss_fn = losses.get_loss_fn_from_config(config, ctx.sde, ctx.model, train=False)
  loss_step = jax.jit(lambda p, x, key: loss_fn(p, ctx.scaler(x), key), out_shardings=ctx.repl)

  def run(ckpt):

    def compute():
      values = []
      for b, batch in enumerate(_batches(ctx, "test", None, 0, 0)):
        if _gather(batch["mask"]).min() < 1:  # the padded last batch
          continue
        values.append(float(loss_step(ckpt.params, ctx.global_batch(batch["image"]), ctx.rng(ckpt.step, 0, b))))
      if not values:
        raise ValueError(f"the test split has fewer examples than eval.batch_size={config.eval.batch_size}: "
                         "lower it to evaluate the loss.")
      return {"loss": np.array(values)}

    folder = ctx.units(ckpt, "loss", ())
    arrays, _ = _unit(folder / "loss.npz", compute)
    return {"eval_loss": float(arrays["loss"].mean()), "eval_loss_units": folder.name}

  return run


def _per_example_units(ctx, ckpt, folder, split, dequantize, passes, fn, fields, desc):
  """Runs `fn(rng, params, data) -> dict of (B,) arrays [+ 'nfe']` over `passes` passes of a split, one npz per
  batch in `folder`.

  Returns ({field: all valid values, concatenated}, the NFE of every batch (0 where fn reports none), the
  seconds spent computing, the examples computed now).
  """
  n_batches = math.ceil(datasets.num_examples(ctx.config, split) / ctx.config.eval.batch_size)
  step, params = ckpt.step, ckpt.params
  values, nfes = {f: [] for f in fields}, []
  seconds, computed = 0.0, 0

  def collect(arrays):
    for f in fields:
      values[f].append(arrays[f])
    nfes.append(float(arrays["nfe"]))

  for p in range(passes):
    names = [f"pass_{p}_batch_{b}.npz" for b in range(n_batches)]
    start_batch = _first_missing(folder, names)
    for b in range(start_batch):  # finished before an interruption
      collect(_unit(folder / names[b], None)[0])
    if start_batch == n_batches:
      continue
    iterator = _batches(ctx, split, dequantize, p, start_batch)
    for b in tqdm.trange(start_batch, n_batches, desc=f"{desc} step {step} pass {p + 1}/{passes}",
                         disable=not ctx.is_main):
      batch = next(iterator)
      mask = _gather(batch["mask"]) > 0

      def compute(batch=batch, mask=mask, p=p, b=b):
        data = ctx.global_batch(ctx.scaler(batch["image"]))
        result = fn(ctx.rng(step, 1 + p, b), params, data)
        return {f: _gather(result[f])[mask] for f in fields} | {"nfe": np.asarray(result.get("nfe", 0))}

      begin = time.perf_counter()
      arrays, _ = _unit(folder / names[b], compute)
      seconds += time.perf_counter() - begin
      computed += int(mask.sum())
      collect(arrays)
  return {f: np.concatenate(v) for f, v in values.items()}, nfes, seconds, computed


def bpd_passes(config):
  """Passes over eval.bpd_dataset: eval.bpd_num_repeats over the test split (each with fresh dequantisation
  noise; the paper averages 5), one over the train split, as the 2021 evaluation did."""
  e = settings.EvalSettings.from_config(config)
  if e.bpd_dataset.lower() not in ("train", "test"):
    raise ValueError(f"eval.bpd_dataset={e.bpd_dataset!r} is not 'train' or 'test'.")
  if e.bpd_num_repeats < 1:
    raise ValueError(f"eval.bpd_num_repeats={e.bpd_num_repeats} must be >= 1.")
  return e.bpd_num_repeats if e.bpd_dataset.lower() == "test" else 1


def make_bpd_eval(ctx):
  """Bits/dim by the probability flow (Song et al. 2021, App. D.2) over `bpd_passes` dequantised passes.

  Discrete DDPM models are read with the continuous convention here, as in 2021 (`get_score_fn`'s
  probability_flow). The solver is the ODE sampler's RK45 pair at rtol = atol = 1e-5 unless eval.bpd_method,
  eval.bpd_rtol or eval.bpd_atol say otherwise, so NFE compare with the 2021 code's scipy RK45.
  """
  from score_sde import likelihood  # pylint: disable=g-import-not-at-top
  e = ctx.eval
  passes = bpd_passes(ctx.config)
  likelihood_fn = likelihood.get_likelihood_fn(ctx.sde, ctx.flow_score_fn, ctx.inverse_scaler,
                                               hutchinson_type=e.bpd_hutchinson, rtol=e.bpd_rtol,
                                               atol=e.bpd_atol, method=e.bpd_method)

  def fn(key, params, data):
    bpd, _, nfe = likelihood_fn(key, params, data)
    return {"bpd": bpd, "nfe": nfe}

  def run(ckpt):
    # Pass p's units do not depend on how many passes there are: more repeats reuse the earlier ones.
    folder = ctx.units(ckpt, "bpd", ("bpd_dataset", "bpd_method", "bpd_rtol", "bpd_atol", "bpd_hutchinson"))
    values, nfes, seconds, computed = _per_example_units(ctx, ckpt, folder, e.bpd_dataset, True, passes, fn,
                                                         ("bpd",), "bpd")
    bpd = values["bpd"]
    report = {"bpd": float(bpd.mean()), "bpd_stderr": float(bpd.std() / np.sqrt(len(bpd))),
              "bpd_examples": int(len(bpd)), "bpd_mean_nfe": float(np.mean(nfes)), "bpd_units": folder.name}
    if computed:
      report["bpd_seconds_per_image"] = seconds / computed
    return report

  return run


def make_vlb_eval(ctx):
  """The DDPM variational bound in bits/dim (rate + distortion) over the test split, no dequantisation.

  With eval.vlb_clip_denoised (default True) the x0 prediction is clipped to the data range before each
  posterior mean, as the DDPM code's bits/dim loop did (`vlb.get_vlb_fn`); the option is part of the units'
  key, so the clipped and unclipped bounds are never mixed on resumption.
  """
  from score_sde import vlb  # pylint: disable=g-import-not-at-top
  clip = ctx.eval.vlb_clip_denoised
  # Refuses SDEs other than VP (the bound is over the DDPM chain) before any checkpoint is read.
  vlb_fn = vlb.get_vlb_fn(ctx.sde, ctx.score_fn, data_centered=ctx.config.data.centered,
                          model_var=ctx.eval.vlb_model_var,
                          continuous=ctx.config.training.continuous, clip_denoised=clip)
  fields = ("bpd", "rate", "distortion", "prior")

  def run(ckpt):
    folder = ctx.units(ckpt, "vlb", ("vlb_model_var", "vlb_clip_denoised"))
    values, _, seconds, computed = _per_example_units(ctx, ckpt, folder, "test", False, 1, vlb_fn, fields, "vlb")
    report = {f"vlb_{f}": float(values[f].mean()) for f in fields}
    report["vlb_units"] = folder.name
    report["vlb_examples"] = int(len(values["bpd"]))
    report["vlb_clip_denoised"] = clip
    if computed:
      report["vlb_seconds_per_image"] = seconds / computed
    return report

  return run


def make_sample_eval(ctx):
  """Draws eval.num_samples samples in rounds, saves each round's uint8 images and features, then scores them."""
  from score_sde import evaluation  # pylint: disable=g-import-not-at-top
  config = ctx.config
  num_samples, batch = int(config.eval.num_samples), int(config.eval.batch_size)
  if num_samples < 2:
    raise ValueError(f"eval.num_samples={num_samples}: FID / KID need at least 2 samples.")
  ref_stats = evaluation.load_reference_stats(config)  # a missing or mismatched file fails before any work
  feature_fn = evaluation.get_feature_fn(config)
  sampler = sampling.get_sampling_fn(config, ctx.sde, ctx.sampler_score_fn, (batch,) + ctx.image_shape, ctx.inverse_scaler,
                                     ctx.sde.default_sampling_eps, sharding=parallel.sampler_sharding(ctx.mesh))
  sample_fn = jax.jit(sampler, out_shardings=(ctx.batch_sharding, ctx.repl))
  rounds = math.ceil(num_samples / batch)
  rounding = ctx.eval.uint8_rounding  # False: the 2021 truncation (image_utils.to_uint8)

  def run(ckpt):
    # eval.num_samples is not part of the key: round r holds the first images of the batch its rng draws, so
    # more samples reuse every full round and redraw only a shorter last one.
    folder = ctx.units(ckpt, "samples", ("uint8_rounding", "feature_network", "inception_path", "inception_v3_path"),
                       with_sampling=True)
    pool, logits, seconds, drawn, nfe = [], [], 0.0, 0, None
    for r in tqdm.trange(rounds, desc=f"sampling step {ckpt.step}", disable=not ctx.is_main):
      wanted = min(batch, num_samples - r * batch)

      def compute(r=r, wanted=wanted):
        samples, round_nfe = sample_fn(ctx.rng(ckpt.step, 1000, r), ckpt.params)
        images = image_utils.to_uint8(_gather(samples)[:wanted], rounding)
        features = _features(feature_fn, images)
        if ctx.is_main and r == 0:
          with (folder / "samples_0.png").open("wb") as f:
            image_utils.save_grid(images[:256], f, scale=4 if images.shape[1] <= 32 else 1)
        return {"samples": images, "pool_3": features["pool_3"], "logits": features["logits"],
                "nfe": np.asarray(round_nfe)}

      begin = time.perf_counter()
      arrays, new = _unit(folder / f"samples_{r}.npz", compute, lambda a, n=wanted: len(a["samples"]) >= n)
      if new:
        seconds += time.perf_counter() - begin
        drawn += len(arrays["samples"])
      nfe = int(arrays["nfe"])
      pool.append(arrays["pool_3"][:wanted])
      logits.append(arrays["logits"][:wanted])
    metrics = evaluation.compute_metrics(np.concatenate(pool), np.concatenate(logits), ref_stats)
    report = {k: float(v) for k, v in metrics.items()}
    report.update(num_samples=num_samples, sampling_nfe=nfe, samples_units=folder.name)
    if drawn:
      report["sampling_seconds_per_image"] = seconds / drawn
    return report

  return run


# Report order: loss, bpd, VLB, samples.
_EVALUATORS = (("enable_loss", make_loss_eval), ("enable_bpd", make_bpd_eval), ("enable_vlb", make_vlb_eval),
               ("enable_sampling", make_sample_eval))


# ---------------------------------------------------------------------------------------------------- driver
def _read_json(path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); move it away (its runs are also in "
                     "history.jsonl beside it) and rerun.") from e


def _write_reports(ctx, out, report):
  """Merges this run's `report` into the checkpoint's report.json (earlier runs' other metrics stay), appends it
  to history.jsonl, and rewrites report.md; returns the merged report."""
  merged = (_read_json(out / "report.json") if (out / "report.json").exists() else {}) | report
  if not ctx.is_main:
    return merged
  history = (out / "history.jsonl").read_text() if (out / "history.jsonl").exists() else ""
  files.write_atomically(out / "history.jsonl",
                         lambda f: f.write(history + json.dumps(report, sort_keys=True) + "\n"), "w")
  files.write_atomically(out / "report.json", lambda f: json.dump(merged, f, indent=1, sort_keys=True), "w")
  _save_npz(out / "report.npz", {k: np.asarray(v) for k, v in merged.items()})
  paths = sorted(ctx.eval_dir.glob("ckpt_*/report.json"), key=lambda p: int(p.parent.name.split("_")[1]))
  reports = [(p.parent.name.split("_")[1], _read_json(p)) for p in paths]
  columns = sorted({k for _, r in reports for k in r} - {"step"})
  lines = ["| step | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
  for step, r in reports:
    lines.append(f"| {step} | " + " | ".join(_fmt(r.get(k, "")) for k in columns) + " |")
  files.write_atomically(ctx.eval_dir / "report.md", lambda f: f.write("\n".join(lines) + "\n"), "w")
  return merged


def _fmt(v):
  return f"{v:.5g}" if isinstance(v, float) else str(v)


def evaluate(config, workdir, eval_folder="eval"):
  """Evaluates checkpoints begin_ckpt..end_ckpt of `workdir`; returns {step: report}."""
  e = settings.EvalSettings.from_config(config)
  wanted = [make for flag, make in _EVALUATORS if getattr(e, flag)]
  if not wanted:
    raise ValueError("nothing to evaluate: set one of eval.enable_loss, enable_bpd, enable_vlb, enable_sampling.")
  pretrained_path = e.pretrained
  steps = [None] if pretrained_path else checkpoint_steps(config)
  ctx = _Context(config, workdir, eval_folder)
  evaluators = [make(ctx) for make in wanted]  # bad settings and missing files fail here, before any work
  reports = {}
  # TensorBoard: each checkpoint's metrics at its step (and the first round of its samples), next to training's
  # curves when pointed at the workdir.
  writer = metric_writers.create_default_writer(str(ctx.eval_dir / "tensorboard"), just_logging=not ctx.is_main)
  for step in steps:
    if pretrained_path:  # a released checkpoint: evaluated once, at the step it holds
      step, params = train_state.restore_ema_params(config, workdir, ctx.model, ctx.mesh)
    else:
      wait_for_checkpoint(workdir, step, e.ckpt_wait_secs)
      restored_step, params = train_state.restore_ema_params(config, workdir, ctx.model, ctx.mesh, step=step)
      assert restored_step == step, (restored_step, step)
    out = ctx.eval_dir / f"ckpt_{step}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = _Checkpoint(step, params, work_keys.params_digest(params), out)
    report = {"step": step}
    for run in evaluators:
      report.update(run(ckpt))
    reports[step] = _write_reports(ctx, out, report)
    _write_tensorboard(writer, out, report)
    summary = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(report.items()) if k != "step" and
                        not k.endswith("_units"))
    kept = sorted(k for k in set(reports[step]) - set(report) if not k.endswith("_units"))
    if kept:  # merged from earlier runs of this checkpoint
      summary += f" (report.json also keeps {', '.join(kept)} from earlier runs)"
    logging.info("Step %d: %s", step, summary)
    if ctx.is_main:
      print(f"step {step}: {summary}  -> {out / 'report.json'}")
  writer.close()
  return reports


def _write_tensorboard(writer, out, report):
  """This run's numeric metrics of one checkpoint as scalars at its step, and its first round of samples."""
  step = report["step"]
  writer.write_scalars(step, {k: v for k, v in report.items()
                              if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
  if "samples_units" in report and (out / report["samples_units"] / "samples_0.npz").exists():
    images = files.load_npz(out / report["samples_units"] / "samples_0.npz")["samples"][:256]
    writer.write_images(step, {"samples": image_utils.make_grid(images)[None]})
  writer.flush()


# ----------------------------------------------------------------------------------------------- --mode stats
def compute_stats(config, split="train"):
  """Writes the reference statistics file of config's data set (`evaluation.stats_path`): the features of every
  example of `split` (no flip, no dequantisation), as the FID / KID reference of `--mode eval`."""
  from score_sde import evaluation  # pylint: disable=g-import-not-at-top
  config_checks.validate_config(config)
  path = evaluation.stats_path(config)
  feature_fn = evaluation.get_feature_fn(config)
  pi, pc = jax.process_index(), jax.process_count()
  n = datasets.num_examples(config, split)
  rounding = settings.EvalSettings.from_config(config).uint8_rounding
  batches = datasets.eval_iterator(config, split, process_index=pi, process_count=pc, dequantize=False)
  pool = []
  for batch in tqdm.tqdm(batches, total=math.ceil(n / config.eval.batch_size), desc=f"features of {split}",
                         disable=jax.process_index() != 0):
    images = image_utils.to_uint8(_gather(batch["image"]), rounding)[_gather(batch["mask"]) > 0]
    pool.append(_features(feature_fn, images)["pool_3"])
  features = np.concatenate(pool)
  if jax.process_index() == 0:
    evaluation.save_stats(path, features, network=feature_fn.network)
    print(f"reference statistics of {len(features)} {config.data.dataset} {split} images -> {path}")
  return path
