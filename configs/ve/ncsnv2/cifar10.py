"""NCSNv2 (unconditional RefineNet, output divided by sigma), CIFAR-10. Target: NCSNv2 (Table 3): FID 10.87, IS 8.40.

  python main.py --config configs/ve/ncsnv2/cifar10.py --mode train --workdir runs/ve/ncsnv2/cifar10
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.refinenet(config, name="ncsnv2_64", sigma_max=50.0, num_scales=232, scale_by_sigma=True, ema_rate=0.999)
  config.sampling.predictor = "none"
  config.sampling.corrector = "ald"
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.176
  config.optim.lr = 1e-4
  return config
