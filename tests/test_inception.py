"""The Flax FID Inception against an independent PyTorch forward of the same network, and its weight files.

The reference below is written from the architecture (NCHW, PyTorch conventions, pytorch-fid's state_dict
names); it shares no code with `score_sde.inception`. Random weights (and random batch-norm statistics) go
through a real .pth -> conversion script -> .npz -> Flax round trip.
"""
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from score_sde import inception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_script():
  spec = importlib.util.spec_from_file_location("convert_inception_weights",
                                                os.path.join(ROOT, "scripts", "convert_inception_weights.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------------- PyTorch reference
class Conv(nn.Module):

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=1e-3)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def avg3(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):

  def __init__(self, cin, pool):
    super().__init__()
    self.branch1x1 = Conv(cin, 64, 1)
    self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = Conv(cin, 64, 1)
    self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
    self.branch_pool = Conv(cin, pool, 1)

  def forward(self, x):
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      self.branch_pool(avg3(x))], 1)


class BlockB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = Conv(cin, 384, 3, stride=2)
    self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

  def forward(self, x):
    d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), d, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = Conv(cin, 192, 1)
    self.branch7x7_1, self.branch7x7_2 = Conv(cin, c7, 1), Conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = Conv(cin, c7, 1)
    self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = Conv(cin, 192, 1)

  def forward(self, x):
    s = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      d = layer(d)
    return torch.cat([self.branch1x1(x), s, d, self.branch_pool(avg3(x))], 1)


class BlockD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = Conv(cin, 192, 1)
    self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

  def forward(self, x):
    s = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), s, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):

  def __init__(self, cin, use_max):
    super().__init__()
    self.use_max = use_max
    self.branch1x1 = Conv(cin, 320, 1)
    self.branch3x3_1 = Conv(cin, 384, 1)
    self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), padding=(0, 1)), Conv(384, 384, (3, 1),
                                                                                         padding=(1, 0))
    self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = Conv(cin, 192, 1)

  def forward(self, x):
    s = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.use_max else avg3(x)
    return torch.cat([self.branch1x1(x), self.branch3x3_2a(s), self.branch3x3_2b(s), self.branch3x3dbl_3a(d),
                      self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class TorchFidInception(nn.Module):

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Conv(3, 32, 3, stride=2), Conv(32, 32, 3)
    self.Conv2d_2b_3x3, self.Conv2d_3b_1x1 = Conv(32, 64, 3, padding=1), Conv(64, 80, 1)
    self.Conv2d_4a_3x3 = Conv(80, 192, 3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
    self.Mixed_6a = BlockB(288)
    self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
    self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
    self.Mixed_7a = BlockD(768)
    self.Mixed_7b, self.Mixed_7c = BlockE(1280, False), BlockE(2048, True)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, images_uint8_nhwc):
    x = torch.from_numpy(images_uint8_nhwc).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
    x = F.max_pool2d(x, 3, stride=2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    pool = x.mean(dim=(2, 3))
    return pool, self.fc(pool)


def _randomise(net, seed):
  """He-normal convs and random batch-norm statistics/affines, so every tensor matters and scales stay O(1)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      elif isinstance(module, nn.BatchNorm2d):
        c = module.num_features
        module.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        module.running_var.copy_(0.5 + torch.rand(c, generator=g))
        module.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
        module.bias.copy_(0.1 * torch.randn(c, generator=g))
      elif isinstance(module, nn.Linear):
        module.weight.copy_(torch.randn(module.weight.shape, generator=g) / module.in_features ** 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=g))
  return net.eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  torch.set_num_threads(1)
  net = _randomise(TorchFidInception(), seed=0)
  folder = tmp_path_factory.mktemp("inception")
  pth, npz = str(folder / "pt_inception.pth"), str(folder / "inception.npz")
  torch.save(net.state_dict(), pth)
  assert _load_script().convert(pth, npz) == len(net.state_dict())
  return net, npz, net.state_dict()


def _rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def test_flax_matches_torch_forward_with_resize(reference):
  net, npz, _ = reference
  rng = np.random.default_rng(1)
  # Two 32x32 RGB images (the resize path, 32 -> 299): one smooth gradient, one noise.
  ramp = np.linspace(0, 255, 32)
  smooth = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 255 - ramp[:, None]), -1)
  images = np.stack([smooth, rng.integers(0, 256, (32, 32, 3))]).astype(np.uint8)
  with torch.no_grad():
    pool_ref, logits_ref = (t.numpy() for t in net(images))
  out = inception.get_inception_fn(inception.load_variables(npz))(jnp.asarray(images))
  assert out["pool_3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
  assert np.std(pool_ref) > 1e-2 and np.std(logits_ref) > 1e-2  # not a degenerate (all-zero) network
  assert _rel_err(out["pool_3"], pool_ref) < 1e-4
  assert _rel_err(out["logits"], logits_ref) < 1e-4


@pytest.mark.parametrize("shape", [(32, 32), (17, 23), (400, 350), (299, 299)])
def test_resize_matches_torch_bilinear(shape):
  x = np.random.default_rng(0).integers(0, 256, (2, *shape, 3)).astype(np.uint8)
  ours = np.asarray(inception.preprocess(jnp.asarray(x)))
  t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
  ref = 2 * F.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False) - 1
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)  # float32 round-off


def test_grey_images_are_repeated_to_rgb():
  grey = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 1)).astype(np.uint8)
  np.testing.assert_array_equal(inception.preprocess(jnp.asarray(grey)),
                                inception.preprocess(jnp.asarray(np.repeat(grey, 3, -1))))


def test_conversion_rejects_missing_mis_shaped_and_extra_tensors(reference):
  _, _, state = reference
  arrays = {k: v.numpy() for k, v in state.items()}
  missing = dict(arrays)
  del missing["Mixed_6c.branch7x7_2.conv.weight"]
  with pytest.raises(ValueError, match=r"lack tensor 'Mixed_6c\.branch7x7_2\.conv\.weight'"):
    inception.variables_from_state_dict(missing)
  bad = dict(arrays, **{"Mixed_7c.branch_pool.bn.running_var": np.ones(191, np.float32)})
  with pytest.raises(ValueError, match=r"'Mixed_7c\.branch_pool\.bn\.running_var' has shape \(191,\), expected "
                                       r"\(192,\)"):
    inception.variables_from_state_dict(bad)
  transposed = dict(arrays, **{"fc.weight": arrays["fc.weight"].T})
  with pytest.raises(ValueError, match=r"'fc\.weight' has shape \(2048, 1008\), expected \(1008, 2048\)"):
    inception.variables_from_state_dict(transposed)
  extra = dict(arrays, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  with pytest.raises(ValueError, match="does not use"):
    inception.variables_from_state_dict(extra)


def test_script_reports_missing_pth(tmp_path, capsys):
  with pytest.raises(SystemExit, match="does not exist; download it from https://github.com/mseitzer"):
    _load_script().main(["--pth", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x.npz")])
  del capsys


def test_weight_file_errors(tmp_path, reference):
  _, npz, _ = reference
  with pytest.raises(ValueError, match="eval.inception_path is not set: download https://github.com/mseitzer"):
    inception.resolve_path("")
  with pytest.raises(ValueError, match="do not exist: download .*/convert_inception_weights.py"):
    inception.load_variables(str(tmp_path / "missing.npz"))
  (tmp_path / "broken.npz").write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="unreadable"):
    inception.load_variables(str(tmp_path / "broken.npz"))
  with np.load(npz) as data:
    stored = dict(data)
  del stored["params/Mixed_5b/branch_pool/bn/scale"]
  np.savez(tmp_path / "partial.npz", **stored)
  with pytest.raises(ValueError, match="lack params/Mixed_5b/branch_pool/bn/scale"):
    inception.load_variables(str(tmp_path / "partial.npz"))
  with pytest.raises(ValueError, match="is the PyTorch file"):
    (tmp_path / "w.pth").write_bytes(b"")
    inception.load_variables(str(tmp_path / "w.pth"))


def test_url_without_network_fails_clearly(tmp_path, monkeypatch):
  monkeypatch.setenv("SCORE_SDE_CACHE", str(tmp_path))
  with pytest.raises(ValueError, match="could not download"):
    inception.resolve_path("http://127.0.0.1:9/inception_fid.npz")  # port 9 (discard): refused at once


def test_feature_fn_of_a_cifar10_config_uses_the_converted_weights(reference):
  from configs import default_cifar10_configs  # pylint: disable=import-outside-toplevel
  from score_sde import evaluation  # pylint: disable=import-outside-toplevel

  _, npz, _ = reference
  config = default_cifar10_configs.get_default_configs()
  config.eval.inception_path = npz
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  out = evaluation.get_feature_fn(config, batch_size=2)(images)  # chunks of 2: (2, 1 + 1 padding)
  direct = inception.get_inception_fn(inception.load_variables(npz))(jnp.asarray(images[:2]))
  assert out["pool_3"].shape == (3, 2048) and out["logits"].shape == (3, 1008)
  assert out["pool_3"].dtype == np.float32
  np.testing.assert_allclose(out["pool_3"][:2], direct["pool_3"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["logits"][:2], direct["logits"], rtol=1e-6, atol=1e-6)
