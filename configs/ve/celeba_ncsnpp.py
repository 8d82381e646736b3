"""NCSN++ (discrete SMLD loss, VE), CelebA 64x64 (paper App. H samples; no FID reported).

  python main.py --config configs/ve/celeba_ncsnpp.py --mode train --workdir runs/ve/celeba_ncsnpp
"""
from configs import archs
from configs.default_celeba_configs import get_default_configs


def get_config():
  config = archs.ncsnpp(get_default_configs(), embedding_type="positional")
  config.training.sde = "vesde"
  config.training.continuous = False
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.999
  return config
