"""DDPM++ trained with the discrete DDPM loss, CIFAR-10. Paper (Table 3, 'DDPM++'): FID 2.78, IS 9.64.

  python main.py --config configs/vp/cifar10_ddpmpp.py --mode train --workdir runs/vp/cifar10_ddpmpp
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpmpp(get_default_configs())
  config.training.sde = "vpsde"
  config.training.continuous = False
  config.training.reduce_mean = True
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
