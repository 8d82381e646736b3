"""Defaults for the embedded digits data (scikit-learn's 1,797 handwritten 8x8 digits, resized to 16x16x1).

Small enough to train on a 2-core CPU in minutes, with no download: the default for trying things out.
"""
from configs import default_cifar10_configs


def get_default_configs():
  config = default_cifar10_configs.get_default_configs()
  training = config.training
  training.batch_size = 64
  training.n_iters = 1500                    # ~7 minutes on 2 CPU cores; samples are digits from ~1000 on
  training.n_jitted_steps = 1
  training.log_freq = 50
  training.eval_freq = 200
  training.snapshot_freq = 500
  training.snapshot_freq_for_preemption = 250
  config.sampling.snr = 0.16
  config.eval.begin_ckpt = 1
  config.eval.end_ckpt = 3                   # checkpoint k = step k * snapshot_freq
  config.eval.batch_size = 256
  config.eval.num_samples = 1024
  data = config.data
  data.dataset = "DIGITS"
  data.image_size = 16
  data.num_channels = 1
  data.random_flip = False                   # digits are not mirror-symmetric
  model = config.model
  model.nf = 32
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (8,)
  model.dropout = 0.0
  model.num_scales = 500                     # sampling steps: 500 suffice for 16x16 digits
  model.ema_rate = 0.99                      # short runs: an EMA of 0.999 still remembers the init at step 1000
  config.optim.lr = 1e-3
  config.optim.warmup = 100
  classifier = config.classifier            # a WRN-10-2 for 16x16 digits (--mode train_classifier)
  classifier.blocks_per_group = 1
  classifier.channel_multiplier = 2
  classifier.batch_size = 64
  classifier.n_iters = 1000
  classifier.lr = 2e-3
  classifier.warmup = 100
  classifier.ema_rate = 0.99
  classifier.log_freq = 50
  classifier.eval_freq = 500
  classifier.snapshot_freq = 500
  return config
