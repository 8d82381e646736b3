"""NCSN v1 (conditional RefineNet, 10 noise levels in [0.01, 1], annealed Langevin), CIFAR-10. Target: NCSN (Table 3): FID 25.32, IS 8.87.

  python main.py --config configs/ve/ncsn/cifar10.py --mode train --workdir runs/ve/ncsn/cifar10
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.refinenet(config, name="ncsn", sigma_max=1.0, num_scales=10, scale_by_sigma=False, ema_rate=0.0)
  config.sampling.predictor = "none"
  config.sampling.corrector = "ald"
  config.sampling.n_steps_each = 100
  config.sampling.snr = 0.316
  config.optim.lr = 1e-3
  return config
