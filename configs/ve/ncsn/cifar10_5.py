"""NCSN v1 + technique 5 (EMA of parameters, rate 0.999), CIFAR-10: the NCSNv2 paper's ablation.

  python main.py --config configs/ve/ncsn/cifar10_5.py --mode train --workdir runs/ve/ncsn/cifar10_5
"""
from configs.ve.ncsn import cifar10


def get_config():
  config = cifar10.get_config()
  config.model.ema_rate = 0.999
  return config
