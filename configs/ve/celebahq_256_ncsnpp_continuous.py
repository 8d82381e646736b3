"""NCSN++ cont., VE SDE, CelebA-HQ 256x256 from TFRecords (Score SDE paper, App. H samples; no FID reported).

  python main.py --config configs/ve/celebahq_256_ncsnpp_continuous.py --mode train --workdir runs/ve/celebahq_256_ncsnpp_continuous
"""
from configs.ve.ffhq_256_ncsnpp_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.data.dataset = "CelebAHQ"
  return config
