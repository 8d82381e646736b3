"""NCSN++ cont. deep (8 res blocks per level), sub-VP SDE, CIFAR-10. No number of it in the paper's tables.

  python main.py --config configs/subvp/cifar10_ncsnpp_deep_continuous.py --mode train --workdir runs/subvp/cifar10_ncsnpp_deep_continuous
"""
from configs.vp.cifar10_ncsnpp_deep_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.training.sde = "subvpsde"
  return config
