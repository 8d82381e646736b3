"""DDPM (discrete, L_simple), CIFAR-10. DDPM paper: FID 3.17, IS 9.46, NLL <= 3.75; Score SDE Table 2: NLL 3.28 (ODE), FID 3.37.

  python main.py --config configs/vp/ddpm/cifar10.py --mode train --workdir runs/vp/ddpm/cifar10
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpm(get_default_configs())
  config.training.sde = "vpsde"
  config.training.continuous = False
  config.training.reduce_mean = True
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
