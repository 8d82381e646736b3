"""Finished work is reused only when it is the same work.

Sample rounds (`--mode sample`) and eval units (`--mode eval`) are saved so that an interrupted run resumes
where it stopped. A unit on disk may stand in for a computation only if everything that determined it is the
same: the checkpoint (its step and a digest of its EMA parameters), the model, the SDE and its time labels, the
data and its preprocessing, the seed, the batch size, and the unit's own settings (the sampler's, the ODE
solver's for bits/dim, the VLB's options, the feature network's). Each kind of unit therefore lives in a folder
named by a digest of that key, `<kind>-<digest>/`, with the key itself in `key.json`: a rerun with another
sampler, batch size or tolerance computes anew into a folder of its own, and nothing an earlier run computed is
overwritten.

What does not enter the key (`_NEVER`) is what cannot change a unit's contents: how long and how often
training ran or logs, the optimizer (the parameters are identified by their digest), where the data is read
from, and the sections of other modes (the classifier's, `--mode edit`'s; a mode that reads them adds what it
reads to its own keys).
"""
import dataclasses
import hashlib
import json

import jax
from etils import epath
from flax import traverse_util

from score_sde import checkpointing, files, settings

KEY_FILE = "key.json"

_NEVER = (
    "training.n_iters", "training.log_freq", "training.eval_freq", "training.snapshot_freq",
    "training.snapshot_freq_for_preemption", "training.snapshot_sampling", "training.n_jitted_steps",
    "training.conv_impl", "training.init_from", "training.chunk_loop", "training.remat",
    "training.compute_dtype", "training.grad_accum_steps", "training.batch_size", "optim", "sampling", "eval",
    "data.data_dir", "data.tfrecords_path", "data.image_folder", "data.tfrecords_eval_path", "classifier", "edit",
)


def _excluded(key):
  return any(key == n or key.startswith(n + ".") for n in _NEVER)


def params_digest(params):
  """A short digest of a parameter tree's bits (computed where the arrays are; only per-array sums move)."""
  sums = checkpointing.tree_checksum(params)
  return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:16]


def work_key(config, step, digest, eval_keys=(), with_sampling=False):
  """The flat {name: value} that determines a unit: the config without `_NEVER`, the named `eval.*` settings,
  the sampler's settings if `with_sampling`, and the checkpoint (`step`, parameter `digest`)."""
  flat = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
  key = {k: v for k, v in flat.items() if not _excluded(k)}
  e = dataclasses.asdict(settings.EvalSettings.from_config(config))
  key.update({f"eval.{k}": e[k] for k in eval_keys})
  if with_sampling:  # every field with its default, so a config that omits one names the same work
    key.update({f"sampling.{k}": v for k, v in
                dataclasses.asdict(settings.SamplingSettings.from_config(config)).items()})
  key.update({"checkpoint.step": int(step), "checkpoint.params": digest})
  return key


def key_digest(key):
  return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def unit_folder(parent, kind, key):
  """`<parent>/<kind>-<digest of key>/`, created with its `key.json` (process 0 writes)."""
  folder = epath.Path(parent) / f"{kind}-{key_digest(key)}"
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / KEY_FILE
  canonical = json.loads(json.dumps(key, sort_keys=True, default=str))
  if path.exists():
    try:
      stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); move {folder} away to redo its work.") from e
    if stored != canonical:
      raise ValueError(f"{folder} holds other work than its name says ({path} differs from this run's key); move "
                       "it away to redo its work.")
  elif jax.process_index() == 0:
    files.write_atomically(path, lambda f: f.write(json.dumps(canonical, indent=1, sort_keys=True) + "\n"), "w")
  return folder
