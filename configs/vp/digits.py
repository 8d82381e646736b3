"""Small DDPM++ cont. (VP SDE) on the embedded digits (16x16x1): trains on a 2-core CPU in minutes.

  python main.py --config configs/vp/digits.py --mode train --workdir runs/vp/digits
"""
from configs import archs
from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.ddpmpp(config, num_res_blocks=config.model.num_res_blocks)
  config.model.nf = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (8,)
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  return config
