"""DDPM++ cont., sub-VP SDE, CIFAR-10. Paper: FID 2.61, IS 9.56 (Table 3); NLL 3.02 bits/dim, ODE FID 3.16 (Table 2).

  python main.py --config configs/subvp/cifar10_ddpmpp_continuous.py --mode train --workdir runs/subvp/cifar10_ddpmpp_continuous
"""
from configs.vp.cifar10_ddpmpp_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.training.sde = "subvpsde"
  return config
