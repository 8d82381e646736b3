"""Flagship VE config = NCSN++ cont. deep (VE), CIFAR-10. Paper (Table 3): FID 2.20, IS 9.89.

  python main.py --config configs/ve/cifar10.py --mode train --workdir runs/ve/cifar10
"""
from configs.ve.cifar10_ncsnpp_deep_continuous import get_config  # noqa: F401
