"""The shape of the package: small modules, no module reaching into another's private names, no import cycle.

Static checks with `ast` over every score_sde/**/*.py file (no imports needed), plus importing the sampler
modules one by one in a fresh interpreter.
"""
import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "score_sde"
MAX_LINES = 500

# Files allowed over MAX_LINES, and (importing file, module.private or private name) pairs allowed: none.
LONG_FILES_ALLOWED = set()
PRIVATE_USES_ALLOWED = set()

# The sampler modules, each imported alone in a fresh interpreter.
SAMPLER_MODULES = ("sampler_utils", "predictors", "correctors", "pc_sampler", "flow", "ode_sampler",
                   "fast_samplers", "likelihood", "sampling")


def _files():
  out = []
  for dirpath, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    out += [os.path.join(dirpath, n) for n in names if n.endswith(".py")]
  return sorted(os.path.relpath(p, ROOT).replace(os.sep, "/") for p in out)


def _module_name(rel):
  parts = rel[:-len(".py")].split("/")
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(rel): rel for rel in _files()}


def _tree(rel):
  with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
    return ast.parse(f.read(), filename=rel)


def _resolve(rel, node):
  """The absolute module an ImportFrom names (relative imports resolved against `rel`)."""
  if not node.level:
    return node.module or ""
  base = _module_name(rel).split(".")
  if not rel.endswith("__init__.py"):
    base = base[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _imported(rel, node):
  """[(module, alias bound in the importing file or None)] of the score_sde modules one import statement loads."""
  out = []
  if isinstance(node, ast.Import):
    for a in node.names:
      if a.name in MODULES:
        out.append((a.name, a.asname))  # `import score_sde.x` binds score_sde; only `as` gives an alias
  elif isinstance(node, ast.ImportFrom):
    source = _resolve(rel, node)
    for a in node.names:
      full = f"{source}.{a.name}"
      if full in MODULES:
        out.append((full, a.asname or a.name))
      elif source in MODULES:
        out.append((source, None))
  return out


def _top_level_imports(tree):
  """Import statements executed when the module is imported: not inside a function or class body."""
  out, stack = [], list(tree.body)
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      out.append(node)
    elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
      stack.extend(ast.iter_child_nodes(node))
  return out


def _private_uses(rel):
  """Private names of other score_sde modules that `rel` uses: `from score_sde.x import _name` and
  `alias._name` where alias is a score_sde module it imported (anywhere in the file)."""
  tree, me = _tree(rel), _module_name(rel)
  uses, aliases = set(), {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      source = _resolve(rel, node)
      if source in MODULES and source != me:
        uses.update(f"{source}.{a.name}" for a in node.names if a.name.startswith("_"))
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      for module, alias in _imported(rel, node):
        if alias and module != me:
          aliases[alias] = module
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
        and node.attr.startswith("_") and not node.attr.startswith("__")):
      uses.add(f"{aliases[node.value.id]}.{node.attr}")
  return {(rel, u) for u in uses}


def test_modules_are_short():
  lengths = {}
  for rel in _files():
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
      lengths[rel] = sum(1 for _ in f)
  too_long = {rel: n for rel, n in lengths.items() if n >= MAX_LINES and rel not in LONG_FILES_ALLOWED}
  assert not too_long, f"modules of {MAX_LINES} lines or more (split them): {too_long}"


def test_no_private_names_across_modules():
  found = set()
  for rel in _files():
    found |= _private_uses(rel)
  unexpected = sorted(found - PRIVATE_USES_ALLOWED)
  assert not unexpected, f"private names used from another module (make them public or move the code): {unexpected}"


def test_checks_see_private_uses_and_cycles():
  """The checkers themselves: a private use and a cycle written out in source are found."""
  tree = ast.parse("from score_sde import sampling as s\nfrom score_sde.flow import _x\ns._y\n")
  nodes = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  assert [_imported("score_sde/a.py", n) for n in nodes] == [[("score_sde.sampling", "s")], [("score_sde.flow", None)]]
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def _cycle(graph):
  """One cycle of the directed graph {node: successors} as a list of nodes (first == last), or None."""
  state = {}  # node -> 1 while on the DFS stack, 2 when done

  def visit(node, path):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, path)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [])
      if found:
        return found
  return None


def test_no_top_level_import_cycle():
  """Registries import their members inside a function (see `sampling._import_all_samplers`), so the graph of
  import statements run at import time is acyclic."""
  graph = {}
  for module, rel in MODULES.items():
    deps = set()
    for node in _top_level_imports(_tree(rel)):
      deps.update(m for m, _ in _imported(rel, node))
    graph[module] = deps - {module}
  assert "score_sde.sampling" in graph["score_sde.pc_sampler"]  # the graph sees the registry's members
  cycle = _cycle(graph)
  assert cycle is None, f"import cycle at module level: {' -> '.join(cycle)}"


_IMPORT_ALONE = """
import importlib, sys
import jax  # third-party imports stay loaded; every score_sde module is dropped before each import below
for name in sys.argv[1:]:
  for loaded in [m for m in sys.modules if m == "score_sde" or m.startswith("score_sde.")]:
    del sys.modules[loaded]
  module = importlib.import_module("score_sde." + name)
  if name == "sampling":
    assert {"ddim", "heun", "ode", "pc"} <= set(module.registered_samplers())
    from score_sde import pc_sampler
    assert module.get_pc_sampler is pc_sampler.get_pc_sampler  # the façade
  print("ok", name)
"""


def test_each_sampler_module_imports_alone():
  """Each sampler module imported first, with no other score_sde module loaded (one interpreter: the
  score_sde modules are dropped from sys.modules between imports)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _IMPORT_ALONE, *SAMPLER_MODULES], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == [w for name in SAMPLER_MODULES for w in ("ok", name)], out.stdout


def test_main_modes_are_run_libs():
  """main.py's --mode choices are exactly the modes run_lib dispatches, and an unknown one is one line."""
  from score_sde import run_lib  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, "main.py")) as f:
    tree = ast.parse(f.read())
  enums = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "attr", "") ==
           "DEFINE_enum" and node.args and getattr(node.args[0], "value", None) == "mode"]
  assert len(enums) == 1
  assert tuple(ast.literal_eval(enums[0].args[2])) == run_lib.MODES
  with pytest.raises(ValueError, match=re.escape(f"--mode='tune' is not one of {list(run_lib.MODES)}")):
    run_lib.run("tune", None, "/nonexistent")
