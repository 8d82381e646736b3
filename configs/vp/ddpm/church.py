"""DDPM (discrete), LSUN church_outdoor 256x256: the DDPM paper's 256px model (lr 2e-5, ch_mult (1,1,2,2,4,4), no dropout).

  python main.py --config configs/vp/ddpm/church.py --mode train --workdir runs/vp/ddpm/church
"""
from configs.vp.ddpm.bedroom import get_config as _base_config


def get_config():
  config = _base_config()
  config.data.category = "church_outdoor"
  return config
