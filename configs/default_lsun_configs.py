"""Defaults shared by the 256x256 (LSUN, FFHQ, CelebA-HQ) configs."""
from configs import default_cifar10_configs


def get_default_configs():
  config = default_cifar10_configs.get_default_configs()
  config.training.batch_size = 64
  config.training.n_iters = 2400001
  config.training.snapshot_freq_for_preemption = 5000
  config.sampling.snr = 0.075
  config.eval.begin_ckpt = 50
  config.eval.end_ckpt = 96
  config.eval.batch_size = 512
  config.eval.enable_sampling = True
  config.data.dataset = "LSUN"
  config.data.category = "bedroom"
  config.data.image_size = 256
  config.data.tfrecords_path = ""            # FFHQ / CelebA-HQ read TFRecords from here
  config.model.sigma_max = 378.0
  config.model.num_scales = 2000
  config.model.dropout = 0.0
  # The 2021 config's eval range ran past n_iters (those checkpoints are never written); the last ones here.
  config.eval.begin_ckpt = 48
  config.eval.end_ckpt = 48
  return config
