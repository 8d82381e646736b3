"""Helpers for tests of the input streams: taking batches, comparing them, joining per-process slices."""
import numpy as np


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def join(per_process):
  """Concatenates, batch by batch and in process order, the slices the processes received."""
  return [{k: np.concatenate([p[i][k] for p in per_process]) for k in per_process[0][i]}
          for i in range(len(per_process[0]))]
