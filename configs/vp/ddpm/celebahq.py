"""DDPM (discrete), CelebA-HQ 256x256 from TFRecords: the DDPM paper's 256px model (lr 2e-5, ch_mult (1,1,2,2,4,4), no dropout).

  python main.py --config configs/vp/ddpm/celebahq.py --mode train --workdir runs/vp/ddpm/celebahq
"""
from configs.vp.ddpm.bedroom import get_config as _base_config


def get_config():
  config = _base_config()
  config.data.dataset = "CelebAHQ"
  config.data.tfrecords_path = ""  # set to the folder of *.tfrecords
  return config
