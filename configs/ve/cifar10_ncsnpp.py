"""NCSN++ trained with the discrete SMLD loss (VE), CIFAR-10. Paper (Table 3, 'NCSN++'): FID 2.45, IS 9.73.

  python main.py --config configs/ve/cifar10_ncsnpp.py --mode train --workdir runs/ve/cifar10_ncsnpp
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  # Fourier features need continuous noise levels; the discrete model uses the positional embedding.
  config = archs.ncsnpp(get_default_configs(), embedding_type="positional")
  config.training.sde = "vesde"
  config.training.continuous = False
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.999
  return config
