"""NCSN v1 + techniques 1, 2, 4, 5 (noise levels, step size and EMA), CIFAR-10.

  python main.py --config configs/ve/ncsn/cifar10_1245.py --mode train --workdir runs/ve/ncsn/cifar10_1245
"""
from configs.ve.ncsn import cifar10_124


def get_config():
  config = cifar10_124.get_config()
  config.model.ema_rate = 0.999
  return config
