"""NCSN++ cont., VE SDE, LSUN church_outdoor 256x256 (Score SDE paper, App. H samples; no FID reported).

  python main.py --config configs/ve/church_ncsnpp_continuous.py --mode train --workdir runs/ve/church_ncsnpp_continuous
"""
from configs.ve.bedroom_ncsnpp_continuous import get_config as _base_config


def get_config():
  config = _base_config()
  config.data.category = "church_outdoor"
  config.model.sigma_max = 380.0
  return config
