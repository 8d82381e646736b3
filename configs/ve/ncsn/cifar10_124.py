"""NCSN v1 + techniques 1, 2, 4 (sigma_max 50.0, 232 geometric noise levels, Langevin step size for snr 0.176), CIFAR-10.

  python main.py --config configs/ve/ncsn/cifar10_124.py --mode train --workdir runs/ve/ncsn/cifar10_124
"""
from configs.ve.ncsn import cifar10


def get_config():
  config = cifar10.get_config()
  config.model.sigma_max = 50.0
  config.model.num_scales = 232
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.176
  return config
