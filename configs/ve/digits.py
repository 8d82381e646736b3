"""Small NCSN++ cont. (VE SDE) on the embedded digits (16x16x1); sigma_max 10 >= the largest pairwise distance (about 9; NCSNv2 technique 1).

  python main.py --config configs/ve/digits.py --mode train --workdir runs/ve/digits
"""
from configs import archs
from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.ncsnpp(config, num_res_blocks=config.model.num_res_blocks)
  config.model.nf = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (8,)
  config.training.sde = "vesde"
  config.training.continuous = True
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.data.centered = False
  config.model.sigma_max = 10.0
  config.model.scale_by_sigma = True
  return config
