"""DDPM++ cont. deep, sub-VP SDE, CIFAR-10. Paper: FID 2.41, IS 9.57 (Table 3); NLL 2.99 bits/dim, ODE FID 2.92 (Table 2).

  python main.py --config configs/subvp/cifar10_ddpmpp_deep_continuous.py --mode train --workdir runs/subvp/cifar10_ddpmpp_deep_continuous
"""
from configs.vp.cifar10_ddpmpp_deep_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.training.sde = "subvpsde"
  # The 2021 config's eval range ran past n_iters (those checkpoints are never written); the last ones here.
  config.eval.begin_ckpt = 9
  config.eval.end_ckpt = 19
  return config
