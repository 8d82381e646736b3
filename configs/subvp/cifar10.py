"""Flagship sub-VP config = DDPM++ cont. deep (sub-VP), CIFAR-10. Paper: FID 2.41, IS 9.57; NLL 2.99 bits/dim.

  python main.py --config configs/subvp/cifar10.py --mode train --workdir runs/subvp/cifar10
"""
from configs.subvp.cifar10_ddpmpp_deep_continuous import get_config  # noqa: F401
