"""NCSN++ cont., sub-VP SDE, CIFAR-10. No number of it in the paper's tables, which report DDPM++ for sub-VP.

  python main.py --config configs/subvp/cifar10_ncsnpp_continuous.py --mode train --workdir runs/subvp/cifar10_ncsnpp_continuous
"""
from configs.vp.cifar10_ncsnpp_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.training.sde = "subvpsde"
  return config
