"""DDPM (discrete), LSUN bedroom 256x256: the DDPM paper's 256px model (lr 2e-5, ch_mult (1,1,2,2,4,4), no dropout).

  python main.py --config configs/vp/ddpm/bedroom.py --mode train --workdir runs/vp/ddpm/bedroom
"""
from configs import archs
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = archs.ddpm(get_default_configs())
  config.training.sde = "vpsde"
  config.training.continuous = False
  config.training.reduce_mean = True
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  config.data.dataset = "LSUN"
  config.data.category = "bedroom"
  config.data.centered = True
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.dropout = 0.0
  config.model.num_scales = 1000            # T = 1000 (Ho et al.), not the LSUN defaults' 2000
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  config.optim.lr = 2e-5
  return config
