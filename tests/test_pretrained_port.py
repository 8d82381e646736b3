"""The PyTorch port's `.pth` files, checked against an independent torch re-creation of the port's networks.

`tests/test_pretrained.py` writes its `.pth` files with `pretrained.torch_layout`, the very mapping the loader
uses, so it cannot catch a wrong mapping. Here the files come from torch modules registered as the port
(yang-song/score_sde_pytorch) registers them, written from its definitions, not from our Flax model:

* models/ncsnpp.py `NCSNpp.__init__` and models/ddpm.py `DDPM.__init__` append their layers to one list,
  `self.all_modules = nn.ModuleList(modules)`;
* models/layerspp.py: `GaussianFourierProjection.W` (`nn.Parameter(..., requires_grad=False)`),
  `Combine.Conv` (1x1), `AttnBlockpp` GroupNorm_0, NIN_0..NIN_3, `Upsample` / `Downsample` (`Conv_0` 3x3
  without FIR, `Conv2d_0` FIR Conv2d with FIR, nothing without conv), `ResnetBlockDDPMpp` GroupNorm_0,
  Conv_0, Dense_0, GroupNorm_1, Dropout_0, Conv_1, then Conv_2 (conv_shortcut) or NIN_0 when the width
  changes, `ResnetBlockBigGANpp` GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Dropout_0, Conv_1, Conv_2 (1x1,
  when the width changes or it resamples);
* models/layers.py: `NIN` W (in, out), b; `ResnetBlockDDPM` GroupNorm_0, GroupNorm_1, Conv_0, Conv_1,
  Dense_0, Dropout_0, then Conv_2 / NIN_0; `AttnBlock` GroupNorm_0 (32 groups), NIN_0..NIN_3; DDPM
  `Upsample` / `Downsample` `Conv_0`;
* models/up_or_down_sampling.py `Conv2d`: `weight` (out, in, k, k), `bias`;
* models/utils.py `create_model` wraps the network in `torch.nn.DataParallel` (state-dict keys `module.`);
  models/ema.py keeps `shadow_params` = clones of the `model.parameters()` that require gradients and saves
  `dict(decay, num_updates, shadow_params)`; utils.py `save_checkpoint` saves `{'optimizer':
  optimizer.state_dict(), 'model': model.state_dict(), 'ema': ema.state_dict(), 'step': step}`, the
  optimizer being torch Adam over `score_model.parameters()`.

Only registration (names, order, shapes, requires_grad) is re-created: no forward passes in torch. The
expected Flax tree is built from the torch tensors by an explicit translation written here (Flax's
`{Class}_{k}` auto-names counted per class over `all_modules`; Linear weight transposed, convs OIHW -> HWIO,
GroupNorm weight -> scale), and compared leaf by leaf, by value, with what `pretrained` loads.
"""
import collections

import jax
import numpy as np
import pytest

from score_sde import pretrained
from tests import test_pretrained as tp

torch = pytest.importorskip("torch")
tnn = torch.nn


# ------------------------------------------------------------------------ the port's layers (registration only)
def _gn(groups, channels):
  return tnn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def _conv(cin, cout, k=3):
  return tnn.Conv2d(cin, cout, kernel_size=k, padding=k // 2)


class GaussianFourierProjection(tnn.Module):

  def __init__(self, embedding_size):
    super().__init__()
    self.W = tnn.Parameter(torch.randn(embedding_size), requires_grad=False)


class NIN(tnn.Module):

  def __init__(self, in_dim, num_units):
    super().__init__()
    self.W = tnn.Parameter(torch.zeros(in_dim, num_units))
    self.b = tnn.Parameter(torch.zeros(num_units))


class FIRConv2d(tnn.Module):
  """up_or_down_sampling.Conv2d."""

  def __init__(self, in_ch, out_ch, kernel=3):
    super().__init__()
    self.weight = tnn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
    self.bias = tnn.Parameter(torch.zeros(out_ch))


class Combine(tnn.Module):

  def __init__(self, dim1, dim2):
    super().__init__()
    self.Conv = _conv(dim1, dim2, 1)


class AttnBlockpp(tnn.Module):

  def __init__(self, channels, groups=None):
    super().__init__()
    self.GroupNorm_0 = _gn(groups or min(channels // 4, 32), channels)
    self.NIN_0 = NIN(channels, channels)
    self.NIN_1 = NIN(channels, channels)
    self.NIN_2 = NIN(channels, channels)
    self.NIN_3 = NIN(channels, channels)


class AttnBlock(AttnBlockpp):  # layers.AttnBlock: the same registration, 32 groups

  def __init__(self, channels):
    super().__init__(channels, groups=32)


class Upsample(tnn.Module):  # layerspp.Upsample and (fir=False) layers.Upsample

  def __init__(self, in_ch, out_ch=None, with_conv=False, fir=False):
    super().__init__()
    out_ch = out_ch or in_ch
    if with_conv and not fir:
      self.Conv_0 = _conv(in_ch, out_ch)
    elif with_conv:
      self.Conv2d_0 = FIRConv2d(in_ch, out_ch)


class Downsample(Upsample):  # same attributes; Conv_0 has stride 2 in the port, which no shape shows
  pass


class ResnetBlockDDPMpp(tnn.Module):

  def __init__(self, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False):
    super().__init__()
    out_ch = out_ch or in_ch
    self.GroupNorm_0 = _gn(min(in_ch // 4, 32), in_ch)
    self.Conv_0 = _conv(in_ch, out_ch)
    if temb_dim is not None:
      self.Dense_0 = tnn.Linear(temb_dim, out_ch)
    self.GroupNorm_1 = _gn(min(out_ch // 4, 32), out_ch)
    self.Dropout_0 = tnn.Dropout(0.1)
    self.Conv_1 = _conv(out_ch, out_ch)
    if in_ch != out_ch:
      if conv_shortcut:
        self.Conv_2 = _conv(in_ch, out_ch)
      else:
        self.NIN_0 = NIN(in_ch, out_ch)


class ResnetBlockBigGANpp(tnn.Module):

  def __init__(self, in_ch, out_ch=None, temb_dim=None, up=False, down=False):
    super().__init__()
    out_ch = out_ch or in_ch
    self.GroupNorm_0 = _gn(min(in_ch // 4, 32), in_ch)
    self.Conv_0 = _conv(in_ch, out_ch)
    if temb_dim is not None:
      self.Dense_0 = tnn.Linear(temb_dim, out_ch)
    self.GroupNorm_1 = _gn(min(out_ch // 4, 32), out_ch)
    self.Dropout_0 = tnn.Dropout(0.1)
    self.Conv_1 = _conv(out_ch, out_ch)
    if in_ch != out_ch or up or down:
      self.Conv_2 = _conv(in_ch, out_ch, 1)


class ResnetBlockDDPM(tnn.Module):  # layers.ResnetBlockDDPM: both GroupNorms first, Dense after the convs

  def __init__(self, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False):
    super().__init__()
    out_ch = out_ch or in_ch
    self.GroupNorm_0 = _gn(32, in_ch)
    self.GroupNorm_1 = _gn(32, out_ch)
    self.Conv_0 = _conv(in_ch, out_ch)
    self.Conv_1 = _conv(out_ch, out_ch)
    if temb_dim is not None:
      self.Dense_0 = tnn.Linear(temb_dim, out_ch)
    self.Dropout_0 = tnn.Dropout(0.1)
    if in_ch != out_ch:
      if conv_shortcut:
        self.Conv_2 = _conv(in_ch, out_ch)
      else:
        self.NIN_0 = NIN(in_ch, out_ch)


# ------------------------------------------------------------------------ the port's networks
class Net(tnn.Module):

  def __init__(self, modules):
    super().__init__()
    self.all_modules = tnn.ModuleList(modules)


def port_ncsnpp(config):
  """The `all_modules` list of the port's NCSNpp.__init__ for `config`."""
  m = config.model
  nf, ch_mult, nrb = m.nf, tuple(m.ch_mult), m.num_res_blocks
  nres = len(ch_mult)
  res = [config.data.image_size // 2 ** i for i in range(nres)]
  fir, biggan = m.fir, m.resblock_type.lower() == "biggan"
  prog, prog_in, combine = m.progressive.lower(), m.progressive_input.lower(), m.progressive_combine.lower()
  channels = config.data.num_channels
  temb = 4 * nf
  block = (lambda **kw: ResnetBlockBigGANpp(temb_dim=temb, **kw)) if biggan else (
      lambda **kw: ResnetBlockDDPMpp(temb_dim=temb, **kw))
  mods = []
  if m.embedding_type.lower() == "fourier":
    mods.append(GaussianFourierProjection(nf))
    embed = 2 * nf
  else:
    embed = nf
  if m.conditional:
    mods += [tnn.Linear(embed, temb), tnn.Linear(temb, temb)]
  pyr_ch = channels
  mods.append(_conv(channels, nf))
  hs_c, in_ch = [nf], nf
  for lvl in range(nres):
    for _ in range(nrb):
      out_ch = nf * ch_mult[lvl]
      mods.append(block(in_ch=in_ch, out_ch=out_ch))
      in_ch = out_ch
      if res[lvl] in m.attn_resolutions:
        mods.append(AttnBlockpp(in_ch))
      hs_c.append(in_ch)
    if lvl != nres - 1:
      mods.append(block(in_ch=in_ch, down=True) if biggan else
                  Downsample(in_ch, with_conv=m.resamp_with_conv, fir=fir))
      if prog_in == "input_skip":
        mods.append(Downsample(pyr_ch, with_conv=False, fir=fir))
        mods.append(Combine(pyr_ch, in_ch))
        if combine == "cat":
          in_ch *= 2
      elif prog_in == "residual":
        mods.append(Downsample(pyr_ch, in_ch, with_conv=True, fir=fir))
        pyr_ch = in_ch
      hs_c.append(in_ch)
  in_ch = hs_c[-1]
  mods += [block(in_ch=in_ch), AttnBlockpp(in_ch), block(in_ch=in_ch)]
  pyramid_ch = 0
  for lvl in reversed(range(nres)):
    for _ in range(nrb + 1):
      out_ch = nf * ch_mult[lvl]
      mods.append(block(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
      in_ch = out_ch
    if res[lvl] in m.attn_resolutions:
      mods.append(AttnBlockpp(in_ch))
    if prog != "none":
      top = lvl == nres - 1
      if prog == "output_skip":
        if not top:
          mods.append(Upsample(pyramid_ch, with_conv=False, fir=fir))
        mods += [_gn(min(in_ch // 4, 32), in_ch), _conv(in_ch, channels)]
        pyramid_ch = channels
      elif top:  # residual
        mods += [_gn(min(in_ch // 4, 32), in_ch), _conv(in_ch, in_ch)]
        pyramid_ch = in_ch
      else:
        mods.append(Upsample(pyramid_ch, in_ch, with_conv=True, fir=fir))
        pyramid_ch = in_ch
    if lvl != 0:
      mods.append(block(in_ch=in_ch, up=True) if biggan else
                  Upsample(in_ch, with_conv=m.resamp_with_conv, fir=fir))
  assert not hs_c
  if prog != "output_skip":
    mods += [_gn(min(in_ch // 4, 32), in_ch), _conv(in_ch, channels)]
  return mods


def port_ddpm(config):
  """The `all_modules` list of the port's DDPM.__init__ for `config`."""
  m = config.model
  nf, ch_mult, nrb = m.nf, tuple(m.ch_mult), m.num_res_blocks
  nres = len(ch_mult)
  res = [config.data.image_size // 2 ** i for i in range(nres)]
  channels = config.data.num_channels
  block = lambda **kw: ResnetBlockDDPM(temb_dim=4 * nf, **kw)
  mods = [tnn.Linear(nf, 4 * nf), tnn.Linear(4 * nf, 4 * nf), _conv(channels, nf)]
  hs_c, in_ch = [nf], nf
  for lvl in range(nres):
    for _ in range(nrb):
      out_ch = nf * ch_mult[lvl]
      mods.append(block(in_ch=in_ch, out_ch=out_ch))
      in_ch = out_ch
      if res[lvl] in m.attn_resolutions:
        mods.append(AttnBlock(in_ch))
      hs_c.append(in_ch)
    if lvl != nres - 1:
      mods.append(Downsample(in_ch, with_conv=m.resamp_with_conv))
      hs_c.append(in_ch)
  in_ch = hs_c[-1]
  mods += [block(in_ch=in_ch), AttnBlock(in_ch), block(in_ch=in_ch)]
  for lvl in reversed(range(nres)):
    for _ in range(nrb + 1):
      out_ch = nf * ch_mult[lvl]
      mods.append(block(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
      in_ch = out_ch
    if res[lvl] in m.attn_resolutions:
      mods.append(AttnBlock(in_ch))
    if lvl != 0:
      mods.append(Upsample(in_ch, with_conv=m.resamp_with_conv))
  assert not hs_c
  mods += [_gn(32, in_ch), _conv(in_ch, channels)]
  return mods


def port_model(config, seed=0):
  """DataParallel(port network) with random weights (every parameter, the fixed Fourier W included)."""
  torch.manual_seed(seed)
  mods = port_ncsnpp(config) if config.model.name == "ncsnpp" else port_ddpm(config)
  model = tnn.DataParallel(Net(mods))  # on a machine without GPUs it just holds `module`
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  return model


# ------------------------------------------------------------------------ independent torch -> Flax naming
_FLAX_CLASS = {tnn.Linear: "Dense", tnn.Conv2d: "Conv", tnn.GroupNorm: "GroupNorm"}


def flax_names(net):
  """Flax's auto-name of each `all_modules` entry: `{Class}_{k}`, k counted per class in list order."""
  counts, names = collections.Counter(), []
  for mod in net.all_modules:
    cls = _FLAX_CLASS.get(type(mod), type(mod).__name__)
    names.append(f"{cls}_{counts[cls]}")
    counts[cls] += 1
  return names


def _leaf(layer, pname, value):
  """(Flax leaf name, value in Flax layout) of one torch parameter of `layer`."""
  value = value.detach().cpu().numpy().astype(np.float32)
  if isinstance(layer, tnn.Linear):
    return ("kernel", value.T) if pname == "weight" else ("bias", value)
  if isinstance(layer, tnn.Conv2d):
    return ("kernel", value.transpose(2, 3, 1, 0)) if pname == "weight" else ("bias", value)
  if isinstance(layer, FIRConv2d):
    return ("weight", value.transpose(2, 3, 1, 0)) if pname == "weight" else ("bias", value)
  if isinstance(layer, tnn.GroupNorm):
    return ("scale" if pname == "weight" else "bias"), value
  assert isinstance(layer, (NIN, GaussianFourierProjection)), type(layer)
  return pname, value


def to_flax(model, values):
  """{Flax path: array} of the torch tensors `values` {state-dict name: tensor} of `model`."""
  net = model.module
  names = flax_names(net)
  out = {}
  for key, value in values.items():
    parts = key.split(".")
    assert parts[:2] == ["module", "all_modules"], key
    index, rest = int(parts[2]), parts[3:]
    layer, path = net.all_modules[index], (names[index],)
    if len(rest) == 2:  # a block's child layer
      child = rest[0]
      layer = getattr(layer, child)
      path += ("Conv_0" if child == "Conv" else child,)  # Combine's `Conv` is Flax's Conv_0
    leaf, array = _leaf(layer, rest[-1], value)
    out[path + (leaf,)] = array
  return out


def _flat(tree, leaf=np.asarray):
  return {tuple(str(getattr(k, "key", k)) for k in p): leaf(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_tree(got, want, what):
  got = _flat(got)
  assert set(got) == set(want), (
      f"{what}: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}")
  for path, value in want.items():
    assert got[path].shape == value.shape, (what, path, got[path].shape, value.shape)
    np.testing.assert_array_equal(got[path], value, err_msg=f"{what} {'/'.join(path)}")


# ------------------------------------------------------------------------ a checkpoint as the port saves it
ADAM_STEPS = 3


def save_port_checkpoint(path, model, step):
  """Runs torch Adam a few steps on random gradients, keeps an EMA as models/ema.py does, saves as utils.py.

  Returns (model state dict, EMA {name: tensor}, Adam state) as saved.
  """
  params = list(model.parameters())
  optimizer = torch.optim.Adam(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
  shadow = [p.clone().detach() for p in params if p.requires_grad]
  gen = torch.Generator().manual_seed(1)
  for _ in range(ADAM_STEPS):
    for p in params:
      if p.requires_grad:
        p.grad = torch.randn(p.shape, generator=gen)
    optimizer.step()
  with torch.no_grad():  # an EMA that differs from the live weights
    for s in shadow:
      s.add_(torch.randn(s.shape, generator=gen))
  torch.save({"optimizer": optimizer.state_dict(), "model": model.state_dict(),
              "ema": {"decay": 0.9999, "num_updates": step, "shadow_params": shadow}, "step": step}, path)
  names = [n for n, _ in model.named_parameters()]
  trainable = [n for n, p in model.named_parameters() if p.requires_grad]
  sd = model.state_dict()
  ema = dict(zip(trainable, shadow))
  ema.update({n: sd[n] for n, p in model.named_parameters() if not p.requires_grad})  # fixed: one value
  adam = {names[i]: s for i, s in optimizer.state_dict()["state"].items()}
  return sd, ema, adam


CONFIGS = dict(tp.TINY)
# DDPM++ with the DDPM-style blocks: ResnetBlockDDPMpp (NIN_0 shortcut) and layerspp Up/Downsample Conv_0.
CONFIGS["ddpmpp_ddpm_blocks"] = lambda: tp._config(  # pylint: disable=protected-access
    "configs.vp.cifar10_ddpmpp_continuous", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
    resblock_type="ddpm", data=dict(image_size=16))
# Concatenating input skips (widths double after Combine) and a residual output pyramid without FIR
# (pyramid Upsample with Conv_0), positional embedding.
CONFIGS["ncsnpp_cat_nofir"] = lambda: tp._config(  # pylint: disable=protected-access
    "configs.vp.cifar10_ddpmpp_continuous", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
    progressive="residual", progressive_input="input_skip", progressive_combine="cat", data=dict(image_size=16))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_port_checkpoint_loads_onto_the_right_leaves(tmp_path, name):
  config = CONFIGS[name]()
  model = port_model(config)
  path = str(tmp_path / "checkpoint_8.pth")
  sd, ema, adam = save_port_checkpoint(path, model, step=4321)

  # The loader's layout is the port's registration: state-dict keys, their order, shapes, requires_grad.
  layout = pretrained.torch_layout(config)
  named = list(model.named_parameters())
  assert [e[0] for e in layout] == [n for n, _ in named] == list(sd)
  assert [e[2] for e in layout] == [tuple(p.shape) for _, p in named]
  assert [e[3] for e in layout] == [p.requires_grad for _, p in named]

  # (a) the EMA: every shadow tensor (and the fixed Fourier W) on the leaf the port's names imply.
  want_ema = to_flax(model, ema)
  _, abstract, _ = pretrained.abstract_params(config)
  assert _flat(abstract, lambda v: tuple(v.shape)) == {p: v.shape for p, v in want_ema.items()}
  assert len(want_ema) == len(sd)
  step, loaded = pretrained.load_ema_params(path, config, return_step=True)
  assert step == 4321
  _assert_tree(loaded, want_ema, "EMA")

  # (b) the train state: the live 'model' weights, and torch Adam's moments on the same leaves.
  state = pretrained.load_train_state(path, config)
  assert int(state.step) == 4321
  _assert_tree(state.params, to_flax(model, sd), "params")
  _assert_tree(state.ema_params, want_ema, "ema_params")
  adam_state = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
                if hasattr(s, "mu")][0]
  assert int(adam_state.count) == ADAM_STEPS
  for key, tree in (("exp_avg", adam_state.mu), ("exp_avg_sq", adam_state.nu)):
    want = to_flax(model, {n: s[key] for n, s in adam.items()})
    for n, p in model.named_parameters():  # no gradient, no Adam state: zero moments
      if not p.requires_grad:
        want.update({k: np.zeros_like(v) for k, v in to_flax(model, {n: p}).items()})
    _assert_tree(tree, want, f"Adam {key}")


def test_named_leaves_by_value(tmp_path):
  """A handful of leaves, named by hand from the port's module list, for the FIR / Fourier / BigGAN configs."""
  # ncsnpp_fir_residual, all_modules: 0 Fourier, 1-2 Linear, 3 conv3x3, 4 BigGAN 8->8, 5 BigGAN down,
  # 6 FIR pyramid Downsample (Conv2d_0), 7 BigGAN 8->16, 8 AttnBlockpp, ..., then GroupNorm + conv3x3 last.
  config = CONFIGS["ncsnpp_fir_residual"]()
  model = port_model(config, seed=3)
  path = str(tmp_path / "checkpoint_1.pth")
  sd, ema, _ = save_port_checkpoint(path, model, step=10)
  mods = model.module.all_modules
  assert isinstance(mods[6], Downsample) and isinstance(mods[8], AttnBlockpp)
  loaded = pretrained.load_ema_params(path, config)
  last = len(mods) - 1
  assert isinstance(mods[last - 1], tnn.GroupNorm) and isinstance(mods[last], tnn.Conv2d)
  n_gn = sum(isinstance(m, tnn.GroupNorm) for m in mods)
  n_conv = sum(isinstance(m, tnn.Conv2d) for m in mods)
  t = lambda k: ema[k].detach().numpy()
  checks = [
      (("GaussianFourierProjection_0", "W"), t("module.all_modules.0.W")),
      (("Dense_0", "kernel"), t("module.all_modules.1.weight").T),
      (("Dense_1", "bias"), t("module.all_modules.2.bias")),
      (("Conv_0", "kernel"), t("module.all_modules.3.weight").transpose(2, 3, 1, 0)),
      (("ResnetBlockBigGANpp_1", "Conv_2", "kernel"),
       t("module.all_modules.5.Conv_2.weight").transpose(2, 3, 1, 0)),
      (("ResnetBlockBigGANpp_1", "Dense_0", "kernel"), t("module.all_modules.5.Dense_0.weight").T),
      (("ResnetBlockBigGANpp_1", "GroupNorm_1", "scale"), t("module.all_modules.5.GroupNorm_1.weight")),
      (("Downsample_0", "Conv2d_0", "weight"), t("module.all_modules.6.Conv2d_0.weight").transpose(2, 3, 1, 0)),
      (("Downsample_0", "Conv2d_0", "bias"), t("module.all_modules.6.Conv2d_0.bias")),
      (("AttnBlockpp_0", "NIN_0", "W"), t("module.all_modules.8.NIN_0.W")),
      (("AttnBlockpp_0", "NIN_3", "b"), t("module.all_modules.8.NIN_3.b")),
      ((f"GroupNorm_{n_gn - 1}", "scale"), t(f"module.all_modules.{last - 1}.weight")),
      ((f"Conv_{n_conv - 1}", "kernel"), t(f"module.all_modules.{last}.weight").transpose(2, 3, 1, 0)),
      ((f"Conv_{n_conv - 1}", "bias"), t(f"module.all_modules.{last}.bias")),
  ]
  flat = _flat(loaded)
  for fpath, want in checks:
    np.testing.assert_array_equal(flat[fpath], want, err_msg="/".join(fpath))
  # Shapes pin the layout conversions: (out, in) Linear, OIHW convs, FIR Conv2d and NIN as (in, out).
  assert tuple(sd["module.all_modules.1.weight"].shape) == (32, 16)
  assert flat[("Dense_0", "kernel")].shape == (16, 32)
  assert flat[("Downsample_0", "Conv2d_0", "weight")].shape == (3, 3, 3, 8)
  assert _count(loaded) == sum(v.numel() for v in sd.values())
  assert len(flat) == len(sd)


def _count(tree):
  return sum(int(np.prod(np.shape(v))) for v in jax.tree_util.tree_leaves(tree))


def test_fourier_w_is_taken_from_the_model_not_the_shadow_list(tmp_path):
  """The EMA list lacks the fixed W (requires_grad=False): one shorter than the parameters, W from 'model'."""
  config = CONFIGS["ncsnpp_fir_skip"]()
  model = port_model(config, seed=5)
  path = str(tmp_path / "checkpoint_2.pth")
  sd, _, _ = save_port_checkpoint(path, model, step=3)
  raw = torch.load(path, weights_only=True)
  assert len(raw["ema"]["shadow_params"]) == len(sd) - 1
  assert 0 not in raw["optimizer"]["state"] and len(raw["optimizer"]["state"]) == len(sd) - 1
  loaded = pretrained.load_ema_params(path, config)
  np.testing.assert_array_equal(np.asarray(loaded["GaussianFourierProjection_0"]["W"]),
                                sd["module.all_modules.0.W"].numpy())
  # ... and the first shadow tensor is the first Linear's weight, not W.
  np.testing.assert_array_equal(np.asarray(loaded["Dense_0"]["kernel"]), raw["ema"]["shadow_params"][0].numpy().T)


# ------------------------------------------------------------------------ NCSNv2, 2021 Flax format
def test_ncsnv2_2021_flax_roundtrip(tmp_path):
  config = tp._config("configs.ve.ncsnv2.cifar10", nf=8, data=dict(image_size=16))  # pylint: disable=protected-access
  _, abstract, _ = pretrained.abstract_params(config)
  params, ema, mu, nu = (tp._random(abstract, s) for s in range(4))  # pylint: disable=protected-access
  nu = jax.tree_util.tree_map(np.abs, nu)
  path = str(tmp_path / "checkpoint_9")
  tp.write_2021(path, tp.state_2021(params, ema, mu, nu, step=300001))
  assert pretrained.detect_format(path) == pretrained.FLAX_2021
  step, loaded = pretrained.load_ema_params(path, config, return_step=True)
  assert step == 300001
  _assert_tree(loaded, _flat(ema), "EMA")
  tp._close(tp._outputs(config, loaded), tp._outputs(config, ema))  # pylint: disable=protected-access
  state = pretrained.load_train_state(path, config)
  _assert_tree(state.params, _flat(params), "params")
  adam_state = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
                if hasattr(s, "mu")][0]
  _assert_tree(adam_state.mu, _flat(mu), "Adam mu")
  _assert_tree(adam_state.nu, _flat(nu), "Adam nu")
  assert int(state.step) == int(adam_state.count) == 300001
  # The NCSNv2 tree is no port network: asking for its .pth layout is a clear error.
  with pytest.raises(pretrained.CheckpointError, match="PyTorch port released no"):
    pretrained.torch_layout(config)
