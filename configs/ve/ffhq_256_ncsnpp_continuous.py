"""NCSN++ cont., VE SDE, FFHQ 256x256 (TFRecords) (Score SDE paper, App. H samples; no FID reported).

  python main.py --config configs/ve/ffhq_256_ncsnpp_continuous.py --mode train --workdir runs/ve/ffhq_256_ncsnpp_continuous
"""
from configs import archs
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = archs.ncsnpp_256(get_default_configs())
  config.training.sde = "vesde"
  config.training.continuous = True
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.data.dataset = "FFHQ"
  config.data.tfrecords_path = ""  # set to the folder of *.tfrecords (e.g. --config.data.tfrecords_path=...)
  config.model.sigma_max = 348.0
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.999
  return config
