"""NCSN++ cont., VE SDE, LSUN bedroom 256x256 (Score SDE paper, App. H samples; no FID reported).

  python main.py --config configs/ve/bedroom_ncsnpp_continuous.py --mode train --workdir runs/ve/bedroom_ncsnpp_continuous
"""
from configs import archs
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = archs.ncsnpp_256(get_default_configs())
  config.training.sde = "vesde"
  config.training.continuous = True
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.data.dataset = "LSUN"
  config.data.category = "bedroom"
  config.model.sigma_max = 378.0
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.999
  return config
