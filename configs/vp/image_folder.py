"""Small DDPM++ cont. (VP SDE, 9.9M parameters) on a folder of your own images, at 64x64 RGB.

  python main.py --config configs/vp/image_folder.py --mode train --workdir runs/vp/mine \
    --config.data.image_folder=DIR

Any PNG / JPEG / GIF / WebP / 24/32-bit BMP files at any depth under the folder, of any size and mode: each is
converted to RGB (--config.data.num_channels=1 for grey), centre-cropped to a square and resized to
data.image_size as LSUN is. `<folder>/train` and `<folder>/test` are the splits when present, else
data.eval_fraction of the images are held out for the eval loss; class subfolders give labels
(score_sde/data_user_sources.py). TFRecords of encoded images instead: --config.data.dataset=TFRECORDS
--config.data.tfrecords_path=... (and data.tfrecords_image_key, tfrecords_label_key, tfrecords_eval_path).
FID needs reference statistics of the folder first (--mode stats); their default file name carries a digest of
the folder's training files (image_folder_<digest>_<size>_stats.npz), so each folder has its own.
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  archs.ddpmpp(config, num_res_blocks=2)
  model = config.model
  model.nf = 64
  model.ch_mult = (1, 2, 2, 2)               # 64 -> 8 px
  model.attn_resolutions = (16,)
  model.scale_by_sigma = False
  model.ema_rate = 0.999                     # a smaller data set trains for fewer steps than CIFAR-10
  training = config.training
  training.sde = "vpsde"
  training.continuous = True
  training.reduce_mean = True
  training.batch_size = 64
  training.n_iters = 200001
  training.snapshot_freq = 10000
  training.snapshot_freq_for_preemption = 2000
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.eval.batch_size = 256
  config.eval.num_samples = 10000
  config.eval.begin_ckpt = 1
  data = config.data
  data.dataset = "IMAGE_FOLDER"
  data.image_folder = ""                     # set this: --config.data.image_folder=DIR
  data.image_size = 64
  data.num_channels = 3
  data.centered = True
  return config
