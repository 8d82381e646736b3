"""The DDPM U-Net trained with the discrete SMLD loss (VE), CIFAR-10: the VE column of Table 1 (PC1000 FID 3.60 with reverse diffusion + Langevin).

  python main.py --config configs/ve/cifar10_ddpm.py --mode train --workdir runs/ve/cifar10_ddpm
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpm(get_default_configs())
  config.training.sde = "vesde"
  config.training.continuous = False
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.999
  config.model.conv_size = 3                 # read by nothing
  return config
