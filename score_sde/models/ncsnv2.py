"""NCSNv2 (Song & Ermon 2020): unconditional dilated RefineNets whose output is divided by sigma.

Three registered sizes, as in the 2021 code (which took them from the NCSNv2 paper's NCSNv2 / Deeper /
Deepest networks): `ncsnv2_64` for images under 96px, `ncsnv2_128` (one more stage) for 96 to 191px and
`ncsnv2_256` (two more) from 192px. All share one generic encoder-decoder, `RefineNetBase`:

  Conv_0 -> per encoder stage two ResidualBlocks (the first may downsample; dilated stages keep the size
  and dilate instead) -> RefineBlocks from the deepest stage back to the first, each fusing a skip with the
  previous block's output -> InstanceNorm2dPlus_0 -> act -> Conv_1.

Labels are integer indices into the descending sigma list `utils.get_sigmas(sigma_min, sigma_max,
num_scales)`; the network itself ignores them except to divide by sigma (`scale_by_sigma`), which is what
makes one unconditional network serve every noise level (NCSNv2 technique 3).
"""
from typing import ClassVar, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import layers
from score_sde.models import ncsn_layers as nl
from score_sde.models import remat as remat_lib
from score_sde.models import utils

# An encoder stage: (channel multiplier of nf, resample of its first block, dilation of both blocks).
Stage = Tuple[int, Optional[str], int]


class RefineNetBase(nn.Module):
  """Shared body of the NCSN-family RefineNets; subclasses set ENCODER, REFINE and the block hooks."""
  nf: int = 128
  nonlinearity: str = "elu"
  centered: bool = False
  scale_by_sigma: bool = True
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 232
  interpolation: str = "bilinear"
  remat: bool = False  # rematerialise the residual and refine blocks in the backward pass (remat.py)

  registry_name: ClassVar[str] = "refinenet"
  ENCODER: ClassVar[Sequence[Stage]] = ()
  REFINE: ClassVar[Sequence[int]] = ()       # RefineBlock widths (x nf), deepest first
  SIZE_RANGE: ClassVar[Tuple[int, Optional[int]]] = (1, None)  # [min, max) image sizes it is meant for
  DEFAULT_SCALE_BY_SIGMA: ClassVar[bool] = True

  # --- hooks: the unconditional (NCSNv2) blocks; NCSN v1 overrides them with conditional ones ---
  @nn.nowrap
  def resblock(self, **kwargs):
    return remat_lib.block(nl.ResidualBlock, self.remat)(**kwargs)

  @nn.nowrap
  def refineblock(self, **kwargs):
    return remat_lib.block(nl.RefineBlock, self.remat)(**kwargs)

  @nn.nowrap
  def final_norm(self, h, labels):
    del labels
    return nl.InstanceNorm2dPlus()(h)

  # --- the network ---
  @nn.compact
  def __call__(self, x, labels, train=False):
    del train  # no dropout, no batch statistics
    check_input(x, self)
    act = layers.get_act(self.nonlinearity)
    h = layers.rescale_to_model_range(x, self.centered)
    h = nl.ncsn_conv3x3(h, self.nf)
    skips = self._encode(h, labels, act)
    h = self._decode(skips, labels, act)
    h = act(self.final_norm(h, labels))
    h = nl.ncsn_conv3x3(h, x.shape[-1])
    if self.scale_by_sigma:
      h = h / self._sigmas_at(labels)
    return h

  @nn.nowrap
  def _encode(self, h, labels, act):
    """Two ResidualBlocks per stage; returns each stage's output (the decoder's skip connections)."""
    skips = []
    for mult, resample, dilation in self.ENCODER:
      for block_resample in (resample, None):
        block = self.resblock(output_dim=mult * self.nf, resample=block_resample, act=act, dilation=dilation)
        h = block(h, labels)
      skips.append(h)
    return skips

  @nn.nowrap
  def _decode(self, skips, labels, act):
    """RefineBlocks from the deepest skip up; each fuses a skip and the previous output at the skip's size."""
    h = None
    last = len(self.REFINE) - 1
    for i, (skip, mult) in enumerate(zip(reversed(skips), self.REFINE)):
      inputs = [skip] if h is None else [skip, h]
      block = self.refineblock(output_shape=tuple(skip.shape[1:3]), features=mult * self.nf, act=act,
                               interpolation=self.interpolation, start=i == 0, end=i == last)
      h = block(inputs, labels)
    return h

  def _sigmas_at(self, labels):
    sigmas = jnp.asarray(utils.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
    return sigmas[jnp.asarray(labels).astype(jnp.int32)][:, None, None, None]

  # --- configuration ---
  @classmethod
  def num_downsamples(cls):
    """Stages that halve the size: those that downsample without dilation (ConvMeanPool)."""
    return sum(1 for _, resample, dilation in cls.ENCODER if resample == "down" and dilation == 1)

  @classmethod
  def from_config(cls, config):
    """Builds the network from `config.model` / `config.data`, rejecting settings it cannot honour."""
    m, d = config.model, config.data
    if config.get("training", {}).get("continuous", False):
      raise ValueError(f"model.name={cls.registry_name!r} takes integer noise-level labels: set "
                       "training.continuous=False (SMLD training), or use model.name='ncsnpp'.")
    kwargs = dict(nf=int(m.nf), nonlinearity=m.nonlinearity, centered=bool(d.centered),
                  scale_by_sigma=bool(m.get("scale_by_sigma", cls.DEFAULT_SCALE_BY_SIGMA)),
                  sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max), num_scales=int(m.num_scales),
                  interpolation=m.get("interpolation", "bilinear"))
    validate(cls, kwargs, image_size=int(d.image_size), num_channels=int(d.num_channels),
             normalization=m.get("normalization", "InstanceNorm++"))
    return cls(**kwargs)


def _bad(key, value, why):
  return ValueError(f"{key}={value!r}: {why}")


def validate(cls, kw, image_size, num_channels, normalization):
  """Raises ValueError (naming the config key) for any setting a RefineNet of class `cls` cannot take."""
  name = cls.registry_name
  layers.get_act(kw["nonlinearity"])  # raises its own model.nonlinearity error
  if normalization != "InstanceNorm++":
    raise _bad("model.normalization", normalization, f"{name} only supports 'InstanceNorm++'.")
  if kw["nf"] < 1:
    raise _bad("model.nf", kw["nf"], "must be >= 1.")
  if kw["interpolation"] not in nl.INTERPOLATIONS:
    raise _bad("model.interpolation", kw["interpolation"], f"choose one of {sorted(nl.INTERPOLATIONS)}.")
  if kw["num_scales"] < 1:
    raise _bad("model.num_scales", kw["num_scales"], "must be >= 1.")
  if not 0.0 < kw["sigma_min"] < kw["sigma_max"]:
    raise _bad("model.sigma_min", kw["sigma_min"],
               f"must satisfy 0 < sigma_min < sigma_max={kw['sigma_max']}.")
  if num_channels < 1:
    raise _bad("data.num_channels", num_channels, "must be >= 1.")
  factor = 2 ** cls.num_downsamples()
  lo, hi = cls.SIZE_RANGE
  if image_size % factor or image_size < max(lo, factor) or (hi is not None and image_size >= hi):
    span = f"[{max(lo, factor)}, {hi})" if hi is not None else f">= {max(lo, factor)}"
    raise _bad("data.image_size", image_size,
               f"{name} takes multiples of {factor} in {span}{_size_hint(name)}.")


def _size_hint(name):
  if not name.startswith("ncsnv2"):
    return ""
  return " (ncsnv2_64: < 96px, ncsnv2_128: 96-191px, ncsnv2_256: >= 192px)"


def check_input(x, model):
  """A clear error (instead of a shape mismatch deep inside) for inputs the network cannot take."""
  factor = 2 ** model.num_downsamples()
  if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
    raise ValueError(f"{model.registry_name} input must be NHWC with H and W multiples of {factor}; "
                     f"got shape {x.shape}.")


@utils.register_model(name="ncsnv2_64")
class NCSNv2(RefineNetBase):
  """NCSNv2 for images under 96px (CIFAR-10, CelebA 64): 4 stages, one downsampling, dilations 2 and 4."""
  registry_name: ClassVar[str] = "ncsnv2_64"
  ENCODER: ClassVar[Sequence[Stage]] = ((1, None, 1), (2, "down", 1), (2, "down", 2), (2, "down", 4))
  REFINE: ClassVar[Sequence[int]] = (2, 2, 2, 1)
  SIZE_RANGE: ClassVar[Tuple[int, Optional[int]]] = (2, 96)


@utils.register_model(name="ncsnv2_128")
class NCSNv2_128(RefineNetBase):  # pylint: disable=invalid-name
  """NCSNv2 "Deeper" for 96-191px (LSUN 128): an extra downsampling stage and 4 nf wide dilated stages."""
  registry_name: ClassVar[str] = "ncsnv2_128"
  ENCODER: ClassVar[Sequence[Stage]] = ((1, None, 1), (2, "down", 1), (2, "down", 1), (4, "down", 2),
                                        (4, "down", 4))
  REFINE: ClassVar[Sequence[int]] = (4, 2, 2, 1, 1)
  SIZE_RANGE: ClassVar[Tuple[int, Optional[int]]] = (96, 192)


@utils.register_model(name="ncsnv2_256")
class NCSNv2_256(RefineNetBase):  # pylint: disable=invalid-name
  """NCSNv2 "Deepest" for 192px and up (FFHQ 256): yet another 2 nf downsampling stage."""
  registry_name: ClassVar[str] = "ncsnv2_256"
  ENCODER: ClassVar[Sequence[Stage]] = ((1, None, 1), (2, "down", 1), (2, "down", 1), (2, "down", 1),
                                        (4, "down", 2), (4, "down", 4))
  REFINE: ClassVar[Sequence[int]] = (4, 2, 2, 2, 1, 1)
  SIZE_RANGE: ClassVar[Tuple[int, Optional[int]]] = (192, None)
