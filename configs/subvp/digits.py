"""Small DDPM++ cont. (sub-VP SDE) on the embedded digits (16x16x1).

  python main.py --config configs/subvp/digits.py --mode train --workdir runs/subvp/digits
"""
from configs.vp import digits


def get_config():
  config = digits.get_config()
  config.training.sde = "subvpsde"
  return config
