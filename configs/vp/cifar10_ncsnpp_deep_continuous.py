"""NCSN++ cont. deep (8 res blocks per level), VP SDE, CIFAR-10. No number of it in the paper's tables.

  python main.py --config configs/vp/cifar10_ncsnpp_deep_continuous.py --mode train --workdir runs/vp/cifar10_ncsnpp_deep_continuous
"""
from configs.vp import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  # The 2021 config's eval range ran past n_iters (those checkpoints are never written); the last ones here.
  config.eval.begin_ckpt = 9
  config.eval.end_ckpt = 19
  return config
