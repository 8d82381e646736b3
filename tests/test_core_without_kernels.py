"""The core (score_sde outside score_sde/cpu_kernels) stands without the native CPU kernels: it never imports
them unless `ops.resolve` returns them, names them in one place only, and trains end to end with
training.conv_impl='xla' to the parameters the kernels give."""
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.vp import digits
from score_sde import cpu_kernels, train
from score_sde.models import ops

ROOT = pathlib.Path(__file__).resolve().parent.parent

_IMPORT_CORE = """
import importlib, pkgutil, sys
import jax
import score_sde.models
for info in pkgutil.iter_modules(score_sde.models.__path__):
  importlib.import_module("score_sde.models." + info.name)
for name in ("losses", "train", "sampling", "likelihood", "evaluate", "generate", "config_checks"):
  importlib.import_module("score_sde." + name)
from configs.vp import digits
from score_sde.models import ops, utils as mutils
config = digits.get_config()
model = mutils.create_model(config)
assert model.ops is ops.XLA, model.ops
shapes = jax.eval_shape(lambda k: mutils.init_params(model, k, (1, 16, 16, 1)), jax.random.PRNGKey(0))
assert "Conv_0" in shapes, sorted(shapes)
assert ops.resolve("xla", jax.devices()) is ops.XLA
loaded = sorted(m for m in sys.modules if m.startswith("score_sde.cpu_kernels"))
assert not loaded, loaded
print("core without kernels: ok")
"""


def test_core_imports_builds_and_resolves_xla_without_loading_the_kernels():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", _IMPORT_CORE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "core without kernels: ok" in result.stdout


def test_only_ops_names_the_kernels_package():
  core = ROOT / "score_sde"
  offenders = []
  for path in sorted(core.rglob("*.py")):
    relative = path.relative_to(core).as_posix()
    if relative.startswith("cpu_kernels/") or relative == "models/ops.py":
      continue
    if "cpu_kernels" in path.read_text():
      offenders.append(relative)
  assert not offenders, f"only score_sde/models/ops.py may name cpu_kernels; also: {offenders}"
  assert "import_module(_CPU_EXTRA_PACKAGE)" in (core / "models" / "ops.py").read_text()  # lazily, there


def test_resolve_xla_and_unknown_names():
  assert ops.resolve("xla") is ops.XLA
  assert ops.resolve("xla", jax.devices()) is ops.XLA
  assert ops.resolve("auto", jax.devices("cpu")[:1] * 2) is ops.XLA  # several devices: XLA shards the work
  with pytest.raises(ValueError, match=r"training.conv_impl='mkl' is not one of \['auto', 'xla', 'onednn'\]") as err:
    ops.resolve("mkl")
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("unusable", ["not_installed", "other_platform"])
def test_resolve_without_the_cpu_extra(monkeypatch, unusable):
  if unusable == "not_installed":
    monkeypatch.setattr(ops, "CPU_EXTRA", ("score-sde-no-such-distribution",))
  else:
    monkeypatch.setattr(ops.platform, "machine", lambda: "arm64")
  with pytest.raises(RuntimeError, match=r"pip install -e '\.\[cpu\]' \(or set training.conv_impl='xla'\)") as err:
    ops.resolve("onednn", jax.devices("cpu")[:1])
  assert "\n" not in str(err.value)
  assert ops.resolve("auto", jax.devices("cpu")[:1]) is ops.XLA


def _tiny_digits_config(conv_impl):
  config = digits.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.1)
  config.optim.warmup = 0  # the full learning rate from the first step: the runs must move the parameters
  # Two steps, each logged (a finite loss); no evaluation, one checkpoint at the end.
  config.training.update(batch_size=8, n_iters=2, n_jitted_steps=1, log_freq=1, eval_freq=100, snapshot_freq=100,
                         snapshot_freq_for_preemption=100, snapshot_sampling=False, conv_impl=conv_impl)
  config.eval.batch_size = 8
  return config


def _train(config, workdir, monkeypatch):
  """(final state, the mean train losses `train` logged) of one in-process run."""
  logged, check_finite = [], train._check_finite  # pylint: disable=protected-access
  monkeypatch.setattr(train, "_check_finite", lambda pending: logged.append(check_finite(pending)) or logged[-1])
  state = train.train(config, str(workdir))
  return state, [loss for loss in logged if loss is not None]


def test_xla_training_runs_and_matches_the_kernels(tmp_path, monkeypatch):
  """Two steps of in-process training with training.conv_impl='xla': finite logged losses, moved parameters;
  with the kernels available the same run with 'auto' (the kernels, on this single-CPU run) ends at the same
  parameters to atol 1e-5 (two Adam steps of lr 1e-3 from gradients that agree to float32 rounding)."""
  state, logged = _train(_tiny_digits_config("xla"), tmp_path / "xla", monkeypatch)
  assert int(state.step) == 2 and len(logged) == 2 and np.isfinite(logged).all(), logged
  params = [np.asarray(p) for p in jax.tree.leaves(state.params)]
  assert all(np.isfinite(p).all() for p in params)
  # The EMA lags behind moving parameters (ema_rate 0.99): they differ only if the steps moved them.
  assert max(float(np.abs(p - np.asarray(e)).max()) for p, e in zip(params, jax.tree.leaves(state.ema_params))) > 1e-4
  if not cpu_kernels.available() or len(jax.devices()) != 1:
    pytest.skip(f"no kernels to compare with: {cpu_kernels.unavailable_reason() or 'several devices'}")
  assert ops.resolve("auto", jax.devices()).name == "onednn"
  native, native_logged = _train(_tiny_digits_config("auto"), tmp_path / "auto", monkeypatch)
  assert int(native.step) == 2
  np.testing.assert_allclose(native_logged, logged, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(native.params), params):
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
