"""NCSN++ cont., VE SDE, FFHQ 1024x1024 from TFRecords: the paper's 1024px samples (Fig. 1, App. H).

  python main.py --config configs/ve/ffhq_ncsnpp_continuous.py --mode train --workdir runs/ve/ffhq_ncsnpp_continuous
"""
from configs import archs
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = archs.ncsnpp_256(get_default_configs(), nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1)
  config.training.sde = "vesde"
  config.training.continuous = True
  config.training.batch_size = 8
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.sampling.snr = 0.15
  config.eval.batch_size = 8
  config.data.dataset = "FFHQ"
  config.data.image_size = 1024
  config.data.tfrecords_path = ""  # set to the folder of *.tfrecords
  config.model.sigma_max = 1348.0
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.9999
  return config
