"""NCSN v1 + techniques 1, 2, 4 (sigma_max 90.0, 500 geometric noise levels, Langevin step size for snr 0.128), CelebA 64x64.

  python main.py --config configs/ve/ncsn/celeba_124.py --mode train --workdir runs/ve/ncsn/celeba_124
"""
from configs.ve.ncsn import celeba


def get_config():
  config = celeba.get_config()
  config.model.sigma_max = 90.0
  config.model.num_scales = 500
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.128
  return config
