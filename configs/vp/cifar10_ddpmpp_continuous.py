"""DDPM++ cont., VP SDE, CIFAR-10. Paper: FID 2.55, IS 9.58 (Table 3, PC); NLL 3.16 bits/dim, ODE FID 3.93 (Table 2).

  python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --mode train --workdir runs/vp/cifar10_ddpmpp_continuous
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpmpp(get_default_configs())
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
