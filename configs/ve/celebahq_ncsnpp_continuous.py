"""NCSN++ cont., VE SDE, CelebA-HQ 1024x1024 from TFRecords: the paper's 1024px samples (Fig. 1, App. H).

  python main.py --config configs/ve/celebahq_ncsnpp_continuous.py --mode train --workdir runs/ve/celebahq_ncsnpp_continuous
"""
from configs.ve.ffhq_ncsnpp_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.data.dataset = "CelebAHQ"
  config.training.reduce_mean = False        # 2021: FFHQ averages the loss, CelebA-HQ sums it
  config.training.n_jitted_steps = 1
  return config
