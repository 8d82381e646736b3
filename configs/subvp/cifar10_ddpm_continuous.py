"""DDPM U-Net, continuous sub-VP SDE, CIFAR-10. Paper (Table 2, 'DDPM cont. (sub-VP)'): NLL 3.05 bits/dim, ODE FID 3.56.

  python main.py --config configs/subvp/cifar10_ddpm_continuous.py --mode train --workdir runs/subvp/cifar10_ddpm_continuous
"""
from configs.vp.ddpm.cifar10_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.training.sde = "subvpsde"
  return config
