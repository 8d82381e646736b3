"""A workdir remembers the config that created it, and refuses to continue as another run.

`<workdir>/config.json` holds the training config of the run whose checkpoints the workdir keeps (as last
run: a continuation that may change some keys records its values, e.g. a raised n_iters). A later
`--mode train` on that workdir continues only when everything that defines the run is the same: the model, the
SDE and loss, the data and its preprocessing, the batch size, the optimizer and the seed. How long to train, how
often to log, evaluate, checkpoint and sample, how a step computes (its chunk loop, rematerialisation, compute
dtype and micro-batches: a run moved to smaller devices may turn them on), how samples are drawn and evaluated,
and where the data is read from may change between runs (`MAY_CHANGE`).
"""
import json

from etils import epath
from flax import traverse_util

from score_sde import files

FILE_NAME = "config.json"

# Keys (section.key, or a whole section) whose values may differ from the stored config.
MAY_CHANGE = (
    "training.n_iters", "training.log_freq", "training.eval_freq", "training.snapshot_freq",
    "training.snapshot_freq_for_preemption", "training.snapshot_sampling", "training.n_jitted_steps",
    "training.conv_impl", "training.init_from", "training.chunk_loop", "training.remat",
    "training.compute_dtype", "training.grad_accum_steps", "sampling", "eval", "data.data_dir",
    "data.tfrecords_path", "data.image_folder", "data.tfrecords_eval_path",
)


def _identity(config_dict):
  """The flat {key: value} of a config (as JSON values) without the keys that may change."""
  flat = traverse_util.flatten_dict(config_dict, sep=".")
  return {k: v for k, v in flat.items() if not any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)}


def as_json(config):
  return json.loads(config.to_json_best_effort())


def differing(there, here):
  """['key <value there> there, <value here> here', ...] over the keys of two flat dicts whose values differ."""
  out = []
  for key in sorted(set(there) | set(here)):
    if there.get(key, "<absent>") != here.get(key, "<absent>"):
      out.append(f"{key} {there.get(key, '<absent>')!r} there, {here.get(key, '<absent>')!r} here")
  return out


def differences(stored, config):
  """`differing` over the keys that define the run, the stored config there and `config` here."""
  return differing(_identity(stored), _identity(as_json(config)))


def record(config, workdir):
  """Writes `<workdir>/config.json` (atomically) for a run that starts in `workdir`."""
  files.write_atomically(epath.Path(workdir) / FILE_NAME,
                         lambda f: f.write(json.dumps(as_json(config), indent=2, sort_keys=True) + "\n"), "w")


def stored(workdir):
  """The config stored in `workdir` (a dict), or None where there is none (or it is unreadable)."""
  path = epath.Path(workdir) / FILE_NAME
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except (OSError, ValueError):
    return None


def check(config, workdir):
  """Refuses, in one line, to continue the run in `workdir` with a config that defines another run. A workdir
  from before config.json existed gets one now (from this config)."""
  path = epath.Path(workdir) / FILE_NAME
  if not path.exists():
    record(config, workdir)
    return
  try:
    stored = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); restore it, or use a new --workdir.") from e
  diffs = differences(stored, config)
  if diffs:
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise ValueError(f"--workdir={workdir} holds a run of another config ({shown}); use a new --workdir, or the "
                     f"original values (stored in {path}).")
