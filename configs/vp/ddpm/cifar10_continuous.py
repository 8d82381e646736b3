"""DDPM U-Net, continuous VP SDE, CIFAR-10. Paper (Table 2, 'DDPM cont. (VP)'): NLL 3.21 bits/dim, ODE FID 3.69.

  python main.py --config configs/vp/ddpm/cifar10_continuous.py --mode train --workdir runs/vp/ddpm/cifar10_continuous
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpm(get_default_configs())
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
