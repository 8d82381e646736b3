"""NCSNv2 (unconditional RefineNet, output divided by sigma), LSUN bedroom 128x128. Target: NCSNv2 paper samples.

  python main.py --config configs/ve/ncsnv2/bedroom.py --mode train --workdir runs/ve/ncsnv2/bedroom
"""
from configs import archs
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.refinenet(config, name="ncsnv2_128", sigma_max=190.0, num_scales=1086, scale_by_sigma=True, ema_rate=0.999)
  config.data.image_size = 128
  config.data.category = "bedroom"
  config.training.batch_size = 64
  config.training.n_iters = 300001
  config.training.snapshot_freq = 10000
  config.sampling.predictor = "none"
  config.sampling.corrector = "ald"
  config.sampling.n_steps_each = 3
  config.sampling.snr = 0.095
  config.optim.lr = 1e-4
  # The 2021 config's eval range ran past n_iters (those checkpoints are never written); the last ones here.
  config.eval.begin_ckpt = 30
  config.eval.end_ckpt = 30
  return config
