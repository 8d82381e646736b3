"""NCSN v1 + techniques 1, 2, 4, 5 (noise levels, step size and EMA), CelebA 64x64.

  python main.py --config configs/ve/ncsn/celeba_1245.py --mode train --workdir runs/ve/ncsn/celeba_1245
"""
from configs.ve.ncsn import celeba_124


def get_config():
  config = celeba_124.get_config()
  config.model.ema_rate = 0.999
  return config
