"""Released checkpoints (score_sde/pretrained.py): 2021 Flax msgpack, PyTorch-port .pth, Orbax; bad files.

Tiny networks with random weights are written in each release's layout, loaded back and run on the same
input; paper-size trees are only built abstractly (jax.eval_shape) and written as small-dtype zeros.
"""
import importlib
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from score_sde import checkpointing, losses, pretrained, pretrained_layout
from score_sde.models import utils as mutils
from tests import reference_data

torch = pytest.importorskip("torch")


def _config(module, **model):
  config = importlib.import_module(module).get_config()
  data = model.pop("data", {})
  for k, v in model.items():
    setattr(config.model, k, v)
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


TINY = {
    # progressive input (input_skip, sum) and output (output_skip) paths with FIR resampling, Fourier embedding
    "ncsnpp_fir_skip": lambda: _config("configs.ve.cifar10_ncsnpp_continuous", nf=8, ch_mult=(1, 2),
                                       num_res_blocks=1, attn_resolutions=(8,), progressive="output_skip",
                                       progressive_input="input_skip", progressive_combine="sum",
                                       data=dict(image_size=16)),
    # residual pyramids: FIR Conv2d up and down inside the pyramids, concatenating combine unused
    "ncsnpp_fir_residual": lambda: _config("configs.ve.cifar10_ncsnpp_continuous", nf=8, ch_mult=(1, 2),
                                           num_res_blocks=1, attn_resolutions=(8,), progressive="residual",
                                           progressive_input="residual", data=dict(image_size=16)),
    "ddpmpp": lambda: _config("configs.vp.cifar10_ddpmpp_continuous", nf=8, ch_mult=(1, 2), num_res_blocks=1,
                              attn_resolutions=(8,), data=dict(image_size=16)),
    "ddpm": lambda: _config("configs.vp.ddpm.cifar10", nf=32, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(8,), data=dict(image_size=16)),
}


def _random(abstract, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(0.0, 0.2, s.shape).astype(np.float32), abstract)


_APPLY = {}


def _outputs(config, params):
  """Network outputs on a fixed input; one compiled forward per architecture (keyed by its config)."""
  key = str(config.model) + str(config.data.image_size)
  if key not in _APPLY:
    model = mutils.create_model(config)
    h, c = config.data.image_size, config.data.num_channels
    x = np.random.default_rng(7).uniform(size=(2, h, h, c)).astype(np.float32)
    t = np.array([0.5, 3.0], np.float32) if config.training.continuous else np.array([3, 500], np.int32)
    _APPLY[key] = jax.jit(lambda p: model.apply({"params": p}, x, t, train=False))
  with jax.default_matmul_precision("highest"):
    return np.asarray(_APPLY[key](params))


def state_2021(params, ema, mu, nu, step, dtype=None):
  """The 2021 `State` as flax's to_state_dict wrote it (flax.optim Adam's per-leaf param states)."""
  cast = (lambda a: a) if dtype is None else (lambda a: np.zeros(a.shape, dtype))
  param_states = jax.tree_util.tree_map(lambda m, v: {"grad_ema": cast(m), "grad_sq_ema": cast(v)}, mu, nu)
  return {"step": np.int64(step),
          "optimizer": {"target": jax.tree_util.tree_map(cast, params),
                        "state": {"step": np.int64(step), "param_states": param_states}},
          "lr": np.float32(2e-4), "model_state": {}, "ema_rate": np.float32(0.9999),
          "params_ema": jax.tree_util.tree_map(cast, ema), "rng": np.array([0, 42], np.uint32)}


def write_2021(path, state):
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(state))


def _write_pth(path, config, params, ema, mu, nu, step):
  """A score_sde_pytorch checkpoint: DataParallel state dict, EMA shadow list, torch Adam state."""
  layout = pretrained.torch_layout(config)
  flat = lambda tree: {p: np.asarray(v) for p, v in pretrained_layout.flat_params(tree).items()}
  fp, fe, fm, fn = flat(params), flat(ema), flat(mu), flat(nu)
  tt = lambda a, kind: torch.from_numpy(np.ascontiguousarray(pretrained.to_torch_layout(a, kind)))
  model_sd = {name: tt(fp[fpath], kind) for name, fpath, _, _, kind in layout}
  shadow = [tt(fe[fpath], kind) for _, fpath, _, grad, kind in layout if grad]
  # The fixed Fourier W is a parameter that never changes: model and EMA hold the same values.
  for name, fpath, _, grad, kind in layout:
    if not grad:
      model_sd[name] = tt(fe[fpath], kind)
  state = {i: {"step": torch.tensor(float(step)), "exp_avg": tt(fm[fpath], kind),
               "exp_avg_sq": tt(fn[fpath], kind)} for i, (_, fpath, _, grad, kind) in enumerate(layout) if grad}
  optimizer = {"state": state, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                                                 "weight_decay": 0, "amsgrad": False,
                                                 "params": list(range(len(layout)))}]}
  torch.save({"optimizer": optimizer, "model": model_sd,
              "ema": {"decay": 0.9999, "num_updates": step, "shadow_params": shadow}, "step": step}, path)


def _trees(config):
  _, abstract, _ = pretrained.abstract_params(config)
  params, ema, mu, nu = (_random(abstract, s) for s in range(4))
  nu = jax.tree_util.tree_map(np.abs, nu)
  fixed = [p for p, _ in pretrained_layout.flat_params(abstract).items() if p[0].startswith("GaussianFourier")]
  if fixed:  # W is fixed: the same in params and EMA, and without Adam moments in torch
    ema = jax.tree_util.tree_map(lambda x: x, ema)
    ema["GaussianFourierProjection_0"]["W"] = params["GaussianFourierProjection_0"]["W"]
    mu["GaussianFourierProjection_0"]["W"] = np.zeros_like(mu["GaussianFourierProjection_0"]["W"])
    nu["GaussianFourierProjection_0"]["W"] = np.zeros_like(nu["GaussianFourierProjection_0"]["W"])
  return params, ema, mu, nu


def _close(a, b):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("fmt", ["flax", "torch"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_roundtrip_same_outputs(tmp_path, name, fmt):
  config = TINY[name]()
  params, ema, mu, nu = _trees(config)
  path = str(tmp_path / ("checkpoint_3" if fmt == "flax" else "checkpoint_3.pth"))
  if fmt == "flax":
    write_2021(path, state_2021(params, ema, mu, nu, step=1234))
  else:
    _write_pth(path, config, params, ema, mu, nu, step=1234)
  assert pretrained.detect_format(path) == (pretrained.FLAX_2021 if fmt == "flax" else pretrained.TORCH_PORT)
  loaded = pretrained.load_ema_params(path, config)
  _close(_outputs(config, loaded), _outputs(config, ema))
  state = pretrained.load_train_state(path, config)
  assert int(state.step) == 1234
  _close(_outputs(config, state.params), _outputs(config, params))
  adam = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
          if hasattr(s, "mu")][0]
  assert int(adam.count) == 1234
  for got, want in ((adam.mu, mu), (adam.nu, nu)):
    for (p, g), w in zip(pretrained_layout.flat_params(got).items(), pretrained_layout.flat_params(want).values()):
      np.testing.assert_array_equal(np.asarray(g), w, err_msg=str(p))
  # The state trains on: its structure is that of a fresh TrainState of this config.
  fresh = jax.eval_shape(lambda p: losses.create_train_state(p, losses.get_optimizer(config.optim)),
                         pretrained.abstract_params(config)[1])
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(state)


def test_layout_follows_the_port_definitions():
  """Module indices and registration orders of the port, checked on the paper networks (abstractly)."""
  ve = {e[0]: e for e in pretrained.torch_layout(_config("configs.ve.cifar10_ncsnpp_continuous"))}
  # all_modules: 0 Fourier, 1-2 Dense, 3 conv, 4-7 resblocks at 32x32, 8 down-resblock, 9 pyramid downsample.
  assert ve["module.all_modules.0.W"][1:4] == (("GaussianFourierProjection_0", "W"), (128,), False)
  assert ve["module.all_modules.3.weight"][1:3] == (("Conv_0", "kernel"), (128, 3, 3, 3))
  assert ve["module.all_modules.9.Conv2d_0.weight"][1] == ("Downsample_0", "Conv2d_0", "weight")
  assert ve["module.all_modules.1.weight"][2] == (512, 256)  # Linear (out, in)
  ddpm = [e[0] for e in pretrained.torch_layout(_config("configs.vp.ddpm.cifar10"))]
  # ResnetBlockDDPM registers both GroupNorms before its convs and the Dense after them.
  assert ddpm[6:16] == [f"module.all_modules.3.{n}" for n in (
      "GroupNorm_0.weight", "GroupNorm_0.bias", "GroupNorm_1.weight", "GroupNorm_1.bias", "Conv_0.weight",
      "Conv_0.bias", "Conv_1.weight", "Conv_1.bias", "Dense_0.weight", "Dense_0.bias")]
  for module, reference in (("configs.vp.cifar10_ddpmpp_continuous", "vp_cifar10_ddpmpp_continuous"),
                            ("configs.ve.cifar10_ncsnpp_continuous", "ve_cifar10_ncsnpp_continuous"),
                            ("configs.vp.ddpm.cifar10", "vp_ddpm_cifar10")):
    _, _, order = pretrained.abstract_params(_config(module))
    text = (reference_data.DATA / "param_trees" / f"{reference}.call_order.txt").read_text().split()
    assert [p[0] for p in order if len(p) == 1] == [n for n in text if "/" not in n and n != "<root>"]
    assert len(pretrained.torch_layout(_config(module))) == len(reference_data.reference_tree(reference)[0])


def test_full_paper_tree_2021_loads_every_parameter(tmp_path):
  config = _config("configs.vp.cifar10_ddpmpp_continuous")
  _, abstract, _ = pretrained.abstract_params(config)
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float16), abstract)
  path = str(tmp_path / "checkpoint_26")
  state = state_2021(zeros, zeros, zeros, zeros, step=1300000)
  state["optimizer"]["state"]["param_states"] = {}  # not needed for the EMA: keeps the file at 250 MB
  write_2021(path, state)
  params = pretrained.load_ema_params(path, config)
  tree, total = reference_data.reference_tree("vp_cifar10_ddpmpp_continuous")
  assert reference_data.tree_of(params) == tree
  assert mutils.count_params(params) == total == 61804419
  # ... and the wrong config for it names the right one.
  with pytest.raises(checkpointing.CheckpointError, match=r"most likely belongs to .*cifar10_ddpmpp_continuous"):
    pretrained.load_ema_params(path, _config("configs.ve.cifar10_ncsnpp_continuous"))


def _one_line(excinfo):
  assert "\n" not in str(excinfo.value), str(excinfo.value)


def test_bad_files(tmp_path):
  config = TINY["ddpmpp"]()
  params, ema, mu, nu = _trees(config)
  good = str(tmp_path / "checkpoint_1")
  write_2021(good, state_2021(params, ema, mu, nu, step=5))
  before = sorted(os.listdir(tmp_path))
  # wrong config for the file
  with pytest.raises(checkpointing.CheckpointError, match=r"does not fit .*expected .* found") as e:
    pretrained.load_ema_params(good, TINY["ddpm"]())
  _one_line(e)
  # truncated file
  trunc = tmp_path / "trunc"
  trunc.write_bytes(open(good, "rb").read()[:5000])
  with pytest.raises(checkpointing.CheckpointError, match="truncated or corrupt") as e:
    pretrained.load_ema_params(str(trunc), config)
  _one_line(e)
  # random bytes
  rnd = tmp_path / "random"
  rnd.write_bytes(b"\x00" + np.random.default_rng(0).bytes(4096))
  with pytest.raises(checkpointing.CheckpointError, match="not a checkpoint this code reads") as e:
    pretrained.load_ema_params(str(rnd), config)
  _one_line(e)
  # a .pth whose pickle holds an object: refused, never executed
  marker = tmp_path / "executed"

  class Evil:

    def __reduce__(self):
      return (open, (str(marker), "w"))

  evil = str(tmp_path / "evil.pth")
  torch.save({"model": {}, "ema": Evil(), "step": 1}, evil)
  with pytest.raises(checkpointing.CheckpointError, match="other than tensors and plain containers") as e:
    pretrained.load_ema_params(evil, config)
  _one_line(e)
  assert not marker.exists()
  legacy = tmp_path / "legacy.pth"  # a bare pickle stream
  legacy.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
  with pytest.raises(checkpointing.CheckpointError):
    pretrained.load_ema_params(str(legacy), config)
  assert not marker.exists()
  # truncated .pth
  pth = str(tmp_path / "ok.pth")
  _write_pth(pth, config, params, ema, mu, nu, step=5)
  cut = tmp_path / "cut.pth"
  cut.write_bytes(open(pth, "rb").read()[:3000])
  with pytest.raises(checkpointing.CheckpointError, match="truncated or corrupt") as e:
    pretrained.load_ema_params(str(cut), config)
  _one_line(e)
  # directory with no checkpoint
  empty = tmp_path / "empty_workdir"
  empty.mkdir()
  with pytest.raises(checkpointing.CheckpointError, match="directory without a checkpoint") as e:
    pretrained.load_ema_params(str(empty), config)
  _one_line(e)
  # nothing written anywhere but what the test made
  assert sorted(os.listdir(tmp_path)) == sorted(before + ["trunc", "random", "evil.pth", "legacy.pth", "ok.pth",
                                                          "cut.pth", "empty_workdir"])
  assert os.listdir(empty) == []


def test_orbax_and_converter(tmp_path):
  """The converter writes our Orbax checkpoint; it loads back (as a workdir) to the same outputs."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  config = TINY["ddpmpp"]()
  params, ema, mu, nu = _trees(config)
  src = str(tmp_path / "checkpoint_2.pth")
  _write_pth(src, config, params, ema, mu, nu, step=77)
  overrides = ["--config.model.nf=8", "--config.model.ch_mult=(1, 2)", "--config.model.num_res_blocks=1",
               "--config.model.attn_resolutions=(8,)", "--config.data.image_size=16"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, os.path.join(root, "scripts", "convert_checkpoint.py"), "--checkpoint", src,
                        "--config", os.path.join(root, "configs", "vp", "cifar10_ddpmpp_continuous.py"),
                        "--workdir", str(tmp_path / "wd")] + overrides,
                       capture_output=True, text=True, check=False, cwd=root)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "PyTorch port .pth, step 77" in out.stdout
  assert pretrained.detect_format(str(tmp_path / "wd")) == pretrained.ORBAX
  step, loaded = pretrained.load_ema_params(str(tmp_path / "wd"), config, return_step=True)
  assert step == 77
  _close(_outputs(config, loaded), _outputs(config, ema))
