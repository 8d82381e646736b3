"""Network presets used by several paper configs (each sets the `config.model` fields of one architecture)."""


def ncsnpp(config, *, num_res_blocks=4, fir=True, progressive_input="residual", embedding_type="fourier"):
  """NCSN++ for 32x32 (Score SDE paper §4.4 / App. H): FIR resampling, residual input pyramid."""
  model = config.model
  model.name = "ncsnpp"
  model.normalization = "GroupNorm"          # read by nothing: GroupNorm is the only choice
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = num_res_blocks
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = fir
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = progressive_input
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"              # read by nothing
  model.init_scale = 0.0
  model.embedding_type = embedding_type
  model.fourier_scale = 16
  model.conv_size = 3                        # read by nothing
  return config


def ddpmpp(config, *, num_res_blocks=4):
  """DDPM++: NCSN++ without FIR and input pyramid, with positional time embedding."""
  return ncsnpp(config, num_res_blocks=num_res_blocks, fir=False, progressive_input="none",
                embedding_type="positional")


def ddpm(config, *, conditional=True):
  """The DDPM paper's U-Net (35.7M in the paper; 35,218,947 with attention once per up level)."""
  model = config.model
  model.name = "ddpm"
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = conditional
  return config


def ncsnpp_256(config, *, nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2):
  """NCSN++ for 256px and up: output-skip / input-skip pyramids."""
  ncsnpp(config, num_res_blocks=num_res_blocks, progressive_input="input_skip")
  config.model.nf = nf
  config.model.ch_mult = ch_mult
  config.model.progressive = "output_skip"
  return config


def refinenet(config, *, name, sigma_max, num_scales, scale_by_sigma, ema_rate):
  """NCSN (v1, name='ncsn') and NCSNv2 (name='ncsnv2_*') RefineNets: InstanceNorm++, ELU, no clipping."""
  model = config.model
  model.name = name
  model.scale_by_sigma = scale_by_sigma
  model.sigma_max = sigma_max
  model.num_scales = num_scales
  model.ema_rate = ema_rate
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  model.interpolation = "bilinear"
  config.training.sde = "vesde"
  config.training.continuous = False
  config.optim.amsgrad = False               # read by nothing: plain Adam (as in 2021, which sets it too)
  config.optim.warmup = 0
  config.optim.grad_clip = -1.0
  return config
