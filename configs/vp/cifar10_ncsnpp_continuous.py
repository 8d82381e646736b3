"""NCSN++ cont., VP SDE, CIFAR-10. No number of it in the paper's tables, which report DDPM++ for the VP SDE.

  python main.py --config configs/vp/cifar10_ncsnpp_continuous.py --mode train --workdir runs/vp/cifar10_ncsnpp_continuous
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ncsnpp(get_default_configs(), embedding_type="positional")
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  return config
