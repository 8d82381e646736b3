"""DDPM U-Net without time conditioning (32,329,347 params), CIFAR-10: an ablation.

  python main.py --config configs/vp/ddpm/cifar10_unconditional.py --mode train --workdir runs/vp/ddpm/cifar10_unconditional
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpm(get_default_configs(), conditional=False)
  config.training.sde = "vpsde"
  config.training.continuous = False
  config.training.reduce_mean = True
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
