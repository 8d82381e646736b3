"""NCSN v1 (Song & Ermon 2019): the noise-conditional dilated RefineNet ("CondRefineNetDilated").

The network sees the noise level only through ConditionalInstanceNorm++ (one row of gamma, alpha, beta
per noise level, so num_classes = num_scales), applied before every activation in the encoder's residual
blocks and in the RefineNet decoder's RCU, fusion and pooling paths. Layout (nf = 128, ELU in the paper):

  Conv_0 -> 2 ResidualBlocks at nf -> (downsample) 2 at 2nf -> 2 at 2nf dilation 2 -> 2 at 2nf dilation 4
  -> CondRefineBlocks of widths 2nf (start), 2nf, nf, nf (end) -> ConditionalInstanceNorm++ -> act -> Conv_1.

Unlike NCSNv2 the output is not divided by sigma (`scale_by_sigma` defaults to False) and the last
RefineBlocks are nf wide. The 2021 JAX port of this network never ran (it had no num_classes and called
a normalisation with the wrong arguments); this one follows the original PyTorch architecture. Labels are
integer indices into the descending sigma list, as for NCSNv2.
"""
from typing import ClassVar, Optional, Sequence, Tuple

import flax.linen as nn

from score_sde.models import ncsn_layers as nl
from score_sde.models import remat as remat_lib
from score_sde.models import utils
from score_sde.models.ncsnv2 import RefineNetBase, Stage


@utils.register_model(name="ncsn")
class NCSN(RefineNetBase):
  """Noise-conditional RefineNet; `labels` (B,) integer noise-level indices select the normalisations."""
  scale_by_sigma: bool = False
  sigma_max: float = 1.0
  num_scales: int = 10

  registry_name: ClassVar[str] = "ncsn"
  ENCODER: ClassVar[Sequence[Stage]] = ((1, None, 1), (2, "down", 1), (2, "down", 2), (2, "down", 4))
  REFINE: ClassVar[Sequence[int]] = (2, 2, 1, 1)
  SIZE_RANGE: ClassVar[Tuple[int, Optional[int]]] = (2, None)
  DEFAULT_SCALE_BY_SIGMA: ClassVar[bool] = False

  @nn.nowrap
  def resblock(self, **kwargs):
    return remat_lib.block(nl.ConditionalResidualBlock, self.remat)(num_classes=self.num_scales, **kwargs)

  @nn.nowrap
  def refineblock(self, **kwargs):
    return remat_lib.block(nl.CondRefineBlock, self.remat)(num_classes=self.num_scales, **kwargs)

  @nn.nowrap
  def final_norm(self, h, labels):
    return nl.ConditionalInstanceNorm2dPlus(num_classes=self.num_scales)(h, labels)
