"""Result files that a reader, or a resumed run, never sees half-written; where cached files live."""
import os

import numpy as np
from etils import epath


def write_atomically(path, write, mode="wb"):
  """Calls `write(f)` on `<path>.tmp`, then renames it to `path` (local files and gs:// alike): `path` either
  does not exist or is complete, so a process killed mid-write leaves no truncated file behind."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  with tmp.open(mode) as f:
    write(f)
  tmp.replace(path)


def load_npz(path):
  """Every array of the npz at `path` (local or gs://), as a dict; a one-line ValueError if it is unreadable
  (a result file damaged after it was written: deleting it makes a rerun redo that piece of work)."""
  path = epath.Path(path)
  try:
    with path.open("rb") as f:
      with np.load(f) as data:
        return {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it and rerun to redo it.") from e


def save_npz(path, arrays):
  """`np.savez` of the dict `arrays` to `path`, atomically (see `write_atomically`)."""
  write_atomically(path, lambda f: np.savez(f, **arrays))


def cache_dir():
  """Downloaded weights, trained helper networks and compiled libraries: $SCORE_SDE_CACHE, else
  $XDG_CACHE_HOME/score_sde, else ~/.cache/score_sde."""
  if os.environ.get("SCORE_SDE_CACHE"):
    return os.environ["SCORE_SDE_CACHE"]
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "score_sde")


def check_workdir(workdir, writable=True):
  """A one-line ValueError unless `workdir` is (or can become) a folder this process may write to. Remote
  paths (gs://, ...) are left to the storage layer."""
  if "://" in str(workdir):
    return
  path = os.path.abspath(str(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir={workdir} is a file, not a folder: pass a folder (it is created if missing).")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if writable and not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={workdir} cannot be written ({existing} is read-only for this user): pass a "
                     "folder you can write to.")
