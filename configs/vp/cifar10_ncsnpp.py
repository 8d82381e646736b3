"""NCSN++ (FIR, residual input pyramid) trained with the discrete DDPM loss (VP), CIFAR-10. No number of it in
the paper's tables, which report DDPM++ for the VP SDE.

  python main.py --config configs/vp/cifar10_ncsnpp.py --mode train --workdir runs/vp/cifar10_ncsnpp
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  # Integer DDPM labels: the positional embedding (Fourier features need continuous noise levels).
  config = archs.ncsnpp(get_default_configs(), embedding_type="positional")
  config.training.sde = "vpsde"
  config.training.continuous = False
  config.training.reduce_mean = True
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
