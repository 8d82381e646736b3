"""Access to the 2021 reference data kept in tests/data: parameter trees and golden network outputs."""
import json
import pathlib
import re

import jax
import numpy as np

DATA = pathlib.Path(__file__).parent / "data"
_LINE = re.compile(r"^params/(\S+) \(([\d, ]*)\) float32$")


def reference_tree(name):
  """{path: shape} of a reference parameter tree, e.g. name='vp_ddpm_cifar10'; plus its scalar count."""
  tree, total = {}, None
  for line in (DATA / "param_trees" / f"{name}.txt").read_text().splitlines():
    if line.startswith("# params:"):
      total = int(line.split(",")[1].split()[0])
      continue
    m = _LINE.match(line)
    if m:
      tree[m.group(1)] = tuple(int(s) for s in m.group(2).replace(" ", "").split(",") if s)
  return tree, total


def tree_of(params):
  """{path: shape} of a (possibly abstract) parameter pytree, paths joined by '/'."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def golden(name):
  """(arrays, meta): the golden npz (params unflattened into a nested dict) and its INDEX.json entry."""
  meta = json.loads((DATA / "golden" / "INDEX.json").read_text())[name]
  raw = np.load(DATA / "golden" / meta["file"])
  arrays = {k: raw[k] for k in raw.files if not k.startswith("params/")}
  params = {}
  for k in raw.files:
    if k.startswith("params/"):
      node = params
      *parents, leaf = k[len("params/"):].split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = raw[k]
  arrays["params"] = params
  return arrays, meta


def golden_config(meta):
  """The paper config named in a golden entry, with its overrides applied."""
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(meta["config"].replace("/", ".").removesuffix(".py"))
  config = module.get_config()
  for key, value in meta["overrides"].items():
    section, field = key.split(".")
    setattr(getattr(config, section), field, tuple(value) if isinstance(value, list) else value)
  return config
