"""Defaults shared by every CelebA config (64x64x3: centre crop 140, resize to 64)."""
from configs import default_cifar10_configs


def get_default_configs():
  config = default_cifar10_configs.get_default_configs()
  config.sampling.snr = 0.17
  config.eval.begin_ckpt = 1
  config.eval.end_ckpt = 26
  config.eval.enable_sampling = True
  config.data.dataset = "CELEBA"
  config.data.image_size = 64
  config.model.sigma_max = 90.0
  return config
