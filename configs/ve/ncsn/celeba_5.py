"""NCSN v1 + technique 5 (EMA of parameters, rate 0.999), CelebA 64x64: the NCSNv2 paper's ablation.

  python main.py --config configs/ve/ncsn/celeba_5.py --mode train --workdir runs/ve/ncsn/celeba_5
"""
from configs.ve.ncsn import celeba


def get_config():
  config = celeba.get_config()
  config.model.ema_rate = 0.999
  return config
