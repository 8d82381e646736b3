"""NCSNv2 (unconditional RefineNet, output divided by sigma), CelebA 64x64. Target: NCSNv2 paper samples.

  python main.py --config configs/ve/ncsnv2/celeba.py --mode train --workdir runs/ve/ncsnv2/celeba
"""
from configs import archs
from configs.default_celeba_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.refinenet(config, name="ncsnv2_64", sigma_max=90.0, num_scales=500, scale_by_sigma=True, ema_rate=0.999)
  config.sampling.predictor = "none"
  config.sampling.corrector = "ald"
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.128
  config.optim.lr = 1e-4
  return config
