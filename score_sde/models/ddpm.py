"""The DDPM U-Net (Ho et al. 2020) as the Score SDE paper's `ddpm` model, loadable from the 2021 checkpoints.

Layout (parameter names follow Flax's `{Class}_{k}` in creation order, as the checkpoints store them):
Dense_0, Dense_1 (time embedding, if conditional), Conv_0, then per resolution level `num_res_blocks`
ResnetBlockDDPM (+ AttnBlock at `attn_resolutions`) and a Downsample; a middle ResnetBlock-AttnBlock-
ResnetBlock; per level on the way up `num_res_blocks + 1` ResnetBlocks on concatenated skips, **one**
AttnBlock after them (the 2021 code's placement; the DDPM paper puts one after every block) and an Upsample;
finally GroupNorm_0, act and Conv_1 (initialised at zero scale). The `ops` field (`ops.Ops`, default the
pure-JAX `ops.XLA`) says how the convs and dropout compute, and `remat` whether the residual blocks are
rematerialised in the backward pass (`remat.py`); neither changes a parameter.
"""
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import layers
from score_sde.models import ops as ops_lib
from score_sde.models import remat as remat_lib
from score_sde.models import utils

GROUPS = 32  # DDPM's GroupNorm group count: every feature width must be a multiple of it.


@utils.register_model(name="ddpm")
class DDPM(nn.Module):
  """Noise-prediction U-Net. `labels` are (float or int) timesteps, embedded with the DDPM sinusoid."""
  nf: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Tuple[int, ...] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  nonlinearity: str = "swish"
  centered: bool = True
  scale_by_sigma: bool = False
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  ops: ops_lib.Ops = ops_lib.XLA
  remat: bool = False

  @classmethod
  def from_config(cls, config):
    """Builds the network from `config.model` / `config.data`, rejecting settings it cannot honour."""
    m, d = config.model, config.data
    kwargs = dict(
        nf=int(m.nf), ch_mult=tuple(int(c) for c in m.ch_mult), num_res_blocks=int(m.num_res_blocks),
        attn_resolutions=tuple(int(r) for r in m.attn_resolutions), dropout=float(m.dropout),
        resamp_with_conv=bool(m.resamp_with_conv), conditional=bool(m.conditional),
        nonlinearity=m.nonlinearity, centered=bool(d.centered),
        scale_by_sigma=bool(m.get("scale_by_sigma", False)), sigma_min=float(m.get("sigma_min", 0.01)),
        sigma_max=float(m.get("sigma_max", 50.0)), num_scales=int(m.get("num_scales", 1000)))
    validate(kwargs, image_size=d.image_size, num_channels=d.num_channels,
             normalization=m.get("normalization", "GroupNorm"))
    return cls(**kwargs)

  @nn.compact
  def __call__(self, x, labels, train=False):
    check_input(x, len(self.ch_mult))
    act = layers.get_act(self.nonlinearity)
    # The embedding is computed from float32 labels; the blocks compute in the input's dtype (bfloat16 under
    # training.compute_dtype), which an embedding left in float32 would promote every block to.
    temb = self._time_embedding(labels, act).astype(x.dtype) if self.conditional else None
    block_cls = remat_lib.block(layers.ResnetBlockDDPM, self.remat)
    resblock = lambda out_ch=None: block_cls(act=act, out_ch=out_ch, dropout=self.dropout, ops=self.ops)

    h = layers.rescale_to_model_range(x, self.centered)
    hs = [layers.ddpm_conv3x3(h, self.nf, ops=self.ops)]
    num_levels = len(self.ch_mult)
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = resblock(self.nf * mult)(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = layers.AttnBlock()(h)
        hs.append(h)
      if level != num_levels - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, ops=self.ops)(hs[-1]))

    h = hs[-1]
    h = resblock()(h, temb, train)
    h = layers.AttnBlock()(h)
    h = resblock()(h, temb, train)

    for level in reversed(range(num_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = resblock(self.nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:  # once per level, after its blocks (2021 placement)
        h = layers.AttnBlock()(h)
      if level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv, ops=self.ops)(h)
    assert not hs, "every skip connection must be consumed"

    h = act(layers.ddpm_group_norm()(h))
    h = layers.ddpm_conv3x3(h, x.shape[-1], init_scale=0.0, ops=self.ops)
    if self.scale_by_sigma:
      h = h / self._sigmas_at(labels)
    return h

  def _time_embedding(self, labels, act):
    """Sinusoid of the timestep -> Dense(4 nf) -> act -> Dense(4 nf) (Dense_0, Dense_1)."""
    temb = layers.get_timestep_embedding(jnp.asarray(labels), self.nf)
    temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init())(temb)
    return nn.Dense(4 * self.nf, kernel_init=layers.default_init())(act(temb))

  def _sigmas_at(self, labels):
    """The descending SMLD sigma at each integer label, shaped to divide an NHWC batch (NCSN-style loss)."""
    sigmas = jnp.asarray(utils.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
    return sigmas[jnp.asarray(labels).astype(jnp.int32)][:, None, None, None]


def _bad(key, value, why):
  return ValueError(f"{key}={value!r}: {why}")


def validate(kw, image_size, num_channels, normalization):
  """Raises ValueError (naming the config key) for any setting the DDPM U-Net cannot be built with."""
  layers.get_act(kw["nonlinearity"])  # raises its own model.nonlinearity error
  if normalization != "GroupNorm":
    raise _bad("model.normalization", normalization, "the DDPM U-Net only supports 'GroupNorm'.")
  if kw["nf"] < 1 or kw["nf"] % GROUPS:
    raise _bad("model.nf", kw["nf"],
               f"must be a positive multiple of {GROUPS} (the DDPM GroupNorm has {GROUPS} groups).")
  if not kw["ch_mult"] or min(kw["ch_mult"]) < 1:
    raise _bad("model.ch_mult", kw["ch_mult"], "must be a non-empty tuple of positive ints.")
  if kw["num_res_blocks"] < 1:
    raise _bad("model.num_res_blocks", kw["num_res_blocks"], "must be >= 1.")
  if not 0.0 <= kw["dropout"] < 1.0:
    raise _bad("model.dropout", kw["dropout"], "must lie in [0, 1).")
  if num_channels < 1:
    raise _bad("data.num_channels", num_channels, "must be >= 1.")
  factor = 2 ** (len(kw["ch_mult"]) - 1)
  if image_size < factor or image_size % factor:
    raise _bad("data.image_size", image_size,
               f"must be a positive multiple of {factor} (2**(len(ch_mult)-1), ch_mult={kw['ch_mult']}).")
  resolutions = [image_size // 2 ** i for i in range(len(kw["ch_mult"]))]
  unknown = [r for r in kw["attn_resolutions"] if r not in resolutions]
  if unknown:
    raise _bad("model.attn_resolutions", kw["attn_resolutions"],
               f"{unknown} are not resolutions of this U-Net; choose from {resolutions}.")
  if kw["scale_by_sigma"]:
    _validate_sigmas(kw)


def _validate_sigmas(kw):
  if kw["num_scales"] < 1:
    raise _bad("model.num_scales", kw["num_scales"], "must be >= 1.")
  if not 0.0 < kw["sigma_min"] < kw["sigma_max"]:
    raise _bad("model.sigma_min", kw["sigma_min"],
               f"must satisfy 0 < sigma_min < sigma_max={kw['sigma_max']}.")


def check_input(x, num_levels):
  """A clear error (instead of a shape mismatch deep inside) for inputs the U-Net cannot take."""
  factor = 2 ** (num_levels - 1)
  if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
    raise ValueError(f"DDPM input must be NHWC with H and W multiples of {factor}; got shape {x.shape}.")
