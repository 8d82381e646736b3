"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H).

One U-Net family with many knobs; "DDPM++" is this network with `fir=False`, `progressive_input='none'` and
positional time embeddings. Submodules are created in the same order as the 2021 Flax code, so parameter
trees (and published checkpoints) line up one to one: top level `GaussianFourierProjection_0` (Fourier
only), `Dense_0`, `Dense_1` (conditional only), `Conv_0`, then the resblocks / attention / resampling
modules in the order the forward pass meets them, and `GroupNorm_k`, `Conv_k` of the output head. The `ops`
field (`ops.Ops`, default the pure-JAX `ops.XLA`) says how every block computes, and `remat` whether the
residual blocks are rematerialised in the backward pass (`remat.py`); neither changes a parameter.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import layers, layerspp, utils
from score_sde.models import ops as ops_lib
from score_sde.models import remat as remat_lib

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
EMBEDDING_TYPES = ("fourier", "positional")

# Config keys (under config.model) that become fields of the same name.
_MODEL_KEYS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv",
               "conditional", "fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive",
               "progressive_input", "progressive_combine", "embedding_type", "fourier_scale", "init_scale",
               "scale_by_sigma", "nonlinearity", "sigma_min", "sigma_max", "num_scales")
_DATA_KEYS = ("image_size", "num_channels", "centered")
_TUPLE_KEYS = ("ch_mult", "attn_resolutions", "fir_kernel")


def _check_choice(key, value, choices):
  if value not in choices:
    raise ValueError(f"{key}={value!r} is not one of {list(choices)}.")


def validate(knobs, continuous=True):
  """Raises ValueError, naming the config key, for any knob NCSNpp cannot build or would misread.

  `knobs` maps field names to values (as `NCSNpp` fields); `continuous` is config.training.continuous,
  needed because the Fourier embedding reads the label as sigma, which only continuous VE training feeds.
  """
  _check_choice("model.resblock_type", knobs["resblock_type"], RESBLOCK_TYPES)
  _check_choice("model.progressive", knobs["progressive"], PROGRESSIVE)
  _check_choice("model.progressive_input", knobs["progressive_input"], PROGRESSIVE_INPUT)
  _check_choice("model.progressive_combine", knobs["progressive_combine"], PROGRESSIVE_COMBINE)
  _check_choice("model.embedding_type", knobs["embedding_type"], EMBEDDING_TYPES)
  layers.get_act(knobs["nonlinearity"])  # raises ValueError naming model.nonlinearity
  if knobs["embedding_type"] == "fourier" and not continuous:
    raise ValueError("model.embedding_type='fourier' needs training.continuous=True (it embeds log sigma, "
                     "but discrete training feeds integer noise-level indices); use 'positional'.")
  ch_mult = tuple(knobs["ch_mult"])
  if not ch_mult or any(int(m) != m or m < 1 for m in ch_mult):
    raise ValueError(f"model.ch_mult={ch_mult!r} must be a non-empty sequence of positive integers.")
  for key in ("nf", "num_res_blocks"):
    if int(knobs[key]) != knobs[key] or knobs[key] < 1:
      raise ValueError(f"model.{key}={knobs[key]!r} must be a positive integer.")
  if not 0.0 <= knobs["dropout"] < 1.0:
    raise ValueError(f"model.dropout={knobs['dropout']!r} must be in [0, 1).")
  if knobs["fir"] and len(tuple(knobs["fir_kernel"])) < 1:
    raise ValueError(f"model.fir_kernel={knobs['fir_kernel']!r} must hold at least one tap.")
  factor = 2 ** (len(ch_mult) - 1)
  size = knobs["image_size"]
  if int(size) != size or size < 1 or size % factor:
    raise ValueError(f"data.image_size={size!r} must be a positive multiple of {factor} "
                     f"(2**(len(model.ch_mult)-1), one halving per extra level of ch_mult={ch_mult}).")
  resolutions = [size // 2 ** i for i in range(len(ch_mult))]
  bad = [r for r in knobs["attn_resolutions"] if r not in resolutions]
  if bad:
    raise ValueError(f"model.attn_resolutions={tuple(knobs['attn_resolutions'])!r} has {bad}, not among "
                     f"the network's resolutions {resolutions}.")


@utils.register_model(name="ncsnpp")
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ score network.

  Defaults: the CIFAR-10 NCSN++ continuous architecture, except `scale_by_sigma`, which defaults to the
  neutral False (VE configs turn it on; a VP network divided by VE sigmas would be silently wrong).
  """
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = True
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  init_scale: float = 0.0
  scale_by_sigma: bool = False
  nonlinearity: str = "swish"
  centered: bool = False
  image_size: int = 32
  num_channels: int = 3
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  ops: ops_lib.Ops = ops_lib.XLA
  remat: bool = False

  @classmethod
  def from_config(cls, config):
    """Builds the network from `config.model.*` and `config.data.*`, validating every knob first.

    Keys missing from the config fall back to the field defaults above.
    """
    knobs = {}
    for section, keys in ((config.model, _MODEL_KEYS), (config.data, _DATA_KEYS)):
      for key in keys:
        knobs[key] = section.get(key, cls.__dataclass_fields__[key].default)
    for key in _TUPLE_KEYS:
      knobs[key] = tuple(knobs[key])
    training = config.get("training", None)
    continuous = True if training is None else training.get("continuous", True)
    validate(knobs, continuous=continuous)
    return cls(**knobs)

  def __post_init__(self):
    # Also validate networks built directly from fields (from_config validates first, naming its keys).
    validate({name: getattr(self, name) for name in _MODEL_KEYS + _DATA_KEYS})
    super().__post_init__()

  # ---------------------------------------------------------------------------------------------------
  # Factories for the repeated blocks (each call creates, hence names, one new submodule).

  def _resblock(self, act, **kwargs):
    common = dict(act=act, dropout=self.dropout, init_scale=self.init_scale, skip_rescale=self.skip_rescale,
                  ops=self.ops)
    if self.resblock_type == "ddpm":
      return remat_lib.block(layerspp.ResnetBlockDDPMpp, self.remat)(**common, **kwargs)
    return remat_lib.block(layerspp.ResnetBlockBigGANpp, self.remat)(**common, fir=self.fir,
                                                                     fir_kernel=tuple(self.fir_kernel), **kwargs)

  def _attn(self):
    return layerspp.AttnBlockpp(init_scale=self.init_scale, skip_rescale=self.skip_rescale, ops=self.ops)

  def _resample_kwargs(self):
    return dict(fir=self.fir, fir_kernel=tuple(self.fir_kernel), ops=self.ops)

  # ---------------------------------------------------------------------------------------------------

  def _time_embedding(self, time_cond, act):
    """(temb or None, sigmas for scale_by_sigma or None) from the network's conditioning labels."""
    used_sigmas = None
    if self.embedding_type == "fourier":
      # Continuous VE: the label is sigma itself; embed log sigma (a well-scaled input for the features).
      used_sigmas = time_cond
      temb = layerspp.GaussianFourierProjection(embedding_size=self.nf, scale=self.fourier_scale)(
          jnp.log(time_cond))
    else:
      # Discrete (or VP 999 t) labels; with scale_by_sigma they index the descending SMLD sigma list.
      temb = layers.get_timestep_embedding(time_cond, self.nf)
      if self.scale_by_sigma:
        sigmas = jnp.asarray(utils.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
        used_sigmas = sigmas[time_cond.astype(jnp.int32)]
    if not self.conditional:
      return None, used_sigmas
    temb = nn.Dense(self.nf * 4, kernel_init=layers.default_init())(temb)
    temb = nn.Dense(self.nf * 4, kernel_init=layers.default_init())(act(temb))
    return temb, used_sigmas

  def _down_path(self, x, temb, act, train):
    """Encoder: returns the list of skip activations (its last entry feeds the middle block)."""
    input_pyramid = x if self.progressive_input != "none" else None
    hs = [layerspp.conv3x3(x, self.nf, ops=self.ops)]
    num_levels = len(self.ch_mult)
    for i_level in range(num_levels):
      for _ in range(self.num_res_blocks):
        h = self._resblock(act, out_ch=self.nf * self.ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = self._attn()(h)
        hs.append(h)
      if i_level == num_levels - 1:
        break
      if self.resblock_type == "ddpm":
        h = layerspp.Downsample(with_conv=self.resamp_with_conv, **self._resample_kwargs())(hs[-1])
      else:
        h = self._resblock(act, down=True)(hs[-1], temb, train)
      h, input_pyramid = self._merge_input_pyramid(h, input_pyramid)
      hs.append(h)
    return hs

  def _merge_input_pyramid(self, h, input_pyramid):
    """Progressive input: downsample the input image alongside h and merge it in (skip or residual)."""
    if self.progressive_input == "input_skip":
      input_pyramid = layerspp.Downsample(with_conv=False, **self._resample_kwargs())(input_pyramid)
      h = layerspp.Combine(method=self.progressive_combine, ops=self.ops)(input_pyramid, h)
    elif self.progressive_input == "residual":
      input_pyramid = layerspp.Downsample(out_ch=h.shape[-1], with_conv=True,
                                          **self._resample_kwargs())(input_pyramid)
      input_pyramid = layerspp.skip_sum(input_pyramid, h, self.skip_rescale)
      h = input_pyramid
    return h, input_pyramid

  def _output_pyramid(self, h, pyramid, i_level, out_channels, act):
    """Progressive output: returns (h, pyramid) after this level's contribution to the output pyramid."""
    top = i_level == len(self.ch_mult) - 1
    if self.progressive == "output_skip":
      if not top:
        pyramid = layerspp.Upsample(with_conv=False, **self._resample_kwargs())(pyramid)
      out = layerspp.conv3x3(layerspp.group_norm(h, act, ops=self.ops), out_channels, bias=True,
                             init_scale=self.init_scale, ops=self.ops)
      pyramid = out if top else pyramid + out
    elif self.progressive == "residual":
      if top:
        pyramid = layerspp.conv3x3(layerspp.group_norm(h, act, ops=self.ops), h.shape[-1], bias=True, ops=self.ops)
      else:
        pyramid = layerspp.Upsample(out_ch=h.shape[-1], with_conv=True, **self._resample_kwargs())(pyramid)
        pyramid = layerspp.skip_sum(pyramid, h, self.skip_rescale)
        h = pyramid
    return h, pyramid

  def _up_path(self, h, hs, temb, act, train, out_channels):
    """Decoder: consumes every skip in `hs`; returns (h, output pyramid or None)."""
    pyramid = None
    for i_level in reversed(range(len(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = self._resblock(act, out_ch=self.nf * self.ch_mult[i_level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      # Attention once per level, after the blocks (as the 2021 code; DDPM applied it after each block).
      if h.shape[1] in self.attn_resolutions:
        h = self._attn()(h)
      if self.progressive != "none":
        h, pyramid = self._output_pyramid(h, pyramid, i_level, out_channels, act)
      if i_level != 0:
        if self.resblock_type == "ddpm":
          h = layerspp.Upsample(with_conv=self.resamp_with_conv, **self._resample_kwargs())(h)
        else:
          h = self._resblock(act, up=True)(h, temb, train)
    assert not hs, f"{len(hs)} skip connections left unused"
    return h, pyramid

  def _check_input(self, x, time_cond):
    expected = (self.image_size, self.image_size, self.num_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f"NCSNpp input must be (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                       f"(data.image_size, data.num_channels); got {tuple(x.shape)}.")
    if time_cond.shape != (x.shape[0],):
      raise ValueError(f"time_cond must have shape ({x.shape[0]},), got {tuple(time_cond.shape)}.")

  @nn.compact
  def __call__(self, x, time_cond, train=False):
    """Score (VE) or noise prediction (VP) for images x (B, H, W, C) at labels time_cond (B,)."""
    time_cond = jnp.asarray(time_cond)
    self._check_input(x, time_cond)
    act = layers.get_act(self.nonlinearity)
    temb, used_sigmas = self._time_embedding(time_cond, act)
    if temb is not None:
      # The embedding is computed from float32 labels; the blocks compute in the input's dtype (bfloat16 under
      # training.compute_dtype), which an embedding left in float32 would promote every block to.
      temb = temb.astype(x.dtype)
    h = layers.rescale_to_model_range(x, self.centered)
    hs = self._down_path(h, temb, act, train)

    h = hs[-1]
    h = self._resblock(act)(h, temb, train)
    h = self._attn()(h)
    h = self._resblock(act)(h, temb, train)

    h, pyramid = self._up_path(h, hs, temb, act, train, out_channels=x.shape[-1])
    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = layerspp.group_norm(h, act, ops=self.ops)
      h = layerspp.conv3x3(h, x.shape[-1], init_scale=self.init_scale, ops=self.ops)

    if self.scale_by_sigma:
      h = h / used_sigmas.reshape((-1, 1, 1, 1)).astype(h.dtype)
    return h
