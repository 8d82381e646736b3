"""DDPM++ cont. deep, VP SDE, CIFAR-10. Paper: FID 2.41, IS 9.68 (Table 3); NLL 3.13 bits/dim, ODE FID 3.08 (Table 2).

  python main.py --config configs/vp/cifar10_ddpmpp_deep_continuous.py --mode train --workdir runs/vp/cifar10_ddpmpp_deep_continuous
"""
from configs import archs
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = archs.ddpmpp(get_default_configs(), num_res_blocks=8)
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.data.centered = True
  config.model.scale_by_sigma = False
  config.model.ema_rate = 0.9999
  config.training.n_iters = 950001
  # The 2021 config's eval range ran past n_iters (those checkpoints are never written); the last ones here.
  config.eval.begin_ckpt = 9
  config.eval.end_ckpt = 19
  return config
