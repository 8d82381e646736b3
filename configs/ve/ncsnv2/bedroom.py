"""NCSNv2 (unconditional RefineNet, output divided by sigma), LSUN bedroom 128x128. Target: NCSNv2 paper samples.

  python main.py --config configs/ve/ncsnv2/bedroom.py --mode train --workdir runs/ve/ncsnv2/bedroom
"""
from configs import archs
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.refinenet(config, name="ncsnv2_128", sigma_max=190.0, num_scales=1086, scale_by_sigma=True, ema_rate=0.9999)
  # training.continuous stays False (refinenet): 2021 misspelled it (continuouse) and so trained on
  # continuous labels, which an NCSNv2 (one embedding row per noise level) cannot take.
  config.data.image_size = 128
  config.data.category = "bedroom"
  config.training.batch_size = 128
  config.sampling.predictor = "none"
  config.sampling.corrector = "ald"
  config.sampling.n_steps_each = 3
  config.sampling.snr = 0.095
  config.optim.lr = 1e-4
  return config
