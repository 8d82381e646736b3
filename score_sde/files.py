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


def save_npz(path, arrays):
  """`np.savez` of the dict `arrays` to `path`, atomically (see `write_atomically`)."""
  write_atomically(path, lambda f: np.savez(f, **arrays))


def cache_dir():
  """Downloaded weights, trained helper networks and compiled libraries: $SCORE_SDE_CACHE, else
  $XDG_CACHE_HOME/score_sde, else ~/.cache/score_sde."""
  if os.environ.get("SCORE_SDE_CACHE"):
    return os.environ["SCORE_SDE_CACHE"]
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "score_sde")
