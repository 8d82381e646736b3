"""DDPM++ cont., sub-VP SDE, CIFAR-10. Paper: FID 2.61, IS 9.56 (Table 3); NLL 3.02 bits/dim, ODE FID 3.16 (Table 2).

  python main.py --config configs/subvp/cifar10_ddpmpp_continuous.py --mode train --workdir runs/subvp/cifar10_ddpmpp_continuous
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpmpp(get_default_configs())
  config.training.sde = "subvpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
