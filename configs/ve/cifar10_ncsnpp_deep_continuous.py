"""NCSN++ cont. deep (8 res blocks per level), VE SDE, CIFAR-10. Paper (Table 3): FID 2.20, IS 9.89.

  python main.py --config configs/ve/cifar10_ncsnpp_deep_continuous.py --mode train --workdir runs/ve/cifar10_ncsnpp_deep_continuous
"""
from configs.ve import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  # The 2021 config's eval range ran past n_iters (those checkpoints are never written); the last ones here.
  config.eval.begin_ckpt = 9
  config.eval.end_ckpt = 19
  return config
