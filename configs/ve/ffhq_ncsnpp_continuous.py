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
  config.training.n_jitted_steps = 2
  config.training.reduce_mean = True
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.sampling.snr = 0.15
  # 2021: eval.batch_size 1024 (a round of 1024 images at 1024px does not fit an accelerator; no FID reported)
  config.eval.batch_size = 8
  config.eval.begin_ckpt = 1                 # end_ckpt 48 (the defaults'): 2021's 96 lies past n_iters
  config.data.dataset = "FFHQ"
  config.data.image_size = 1024
  config.data.tfrecords_path = ""  # set to the folder of *.tfrecords
  config.model.sigma_max = 1348.0
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.9999
  config.optim.amsgrad = False               # read by nothing: plain Adam
  return config
