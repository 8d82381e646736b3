"""DDPM U-Net, continuous sub-VP SDE, CIFAR-10. Paper (Table 2, 'DDPM cont. (sub-VP)'): NLL 3.05 bits/dim, ODE FID 3.56.

  python main.py --config configs/subvp/cifar10_ddpm_continuous.py --mode train --workdir runs/subvp/cifar10_ddpm_continuous
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpm(get_default_configs())
  config.training.sde = "subvpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
