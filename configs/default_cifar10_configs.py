"""Defaults shared by every CIFAR-10 config (32x32x3). Paper configs import this and override a few fields."""
import ml_collections


def get_default_configs():
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vpsde"                     # vpsde | subvpsde | vesde (set by each config)
  training.continuous = True                 # continuous-time labels (else the discrete SMLD / DDPM chain)
  training.reduce_mean = False               # mean over pixels (else 0.5 * sum)
  training.likelihood_weighting = False      # weight the loss by g(t)^2 (continuous only)
  training.batch_size = 128                  # global batch, split over all devices
  training.n_iters = 1300001
  training.n_jitted_steps = 5                # train steps per compiled call (lax.scan)
  training.log_freq = 50
  training.eval_freq = 100                   # eval loss on one test batch
  training.snapshot_freq = 50000             # kept checkpoints (and snapshot samples)
  training.snapshot_freq_for_preemption = 10000  # latest-only checkpoint for resuming
  training.snapshot_sampling = True          # sample from the EMA params at each snapshot
  training.init_from = ""                    # start from this checkpoint (2021 Flax, PyTorch .pth, Orbax workdir)
  training.conv_impl = "auto"                # train-step convs + GroupNorm: xla | onednn | auto (native on 1 CPU)
  training.chunk_loop = "auto"               # the n_jitted_steps chunk: scan | unroll | auto (unroll on CPU)
  training.remat = False                     # rematerialise each residual block in the backward pass (memory)
  training.compute_dtype = "float32"         # float32 | bfloat16: the train step's activations (params stay f32)
  training.grad_accum_steps = 1              # micro-batches per step (gradients summed, one optimizer update)

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"                     # pc | ode | ddim | heun (score_sde.sampling.registered_samplers())
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"
  sampling.n_steps_each = 1                  # corrector steps per predictor step
  sampling.noise_removal = True              # return the last step's mean (denoise)
  sampling.probability_flow = False
  sampling.snr = 0.16                        # Langevin signal-to-noise ratio
  sampling.num_steps = 50                    # ddim / heun: steps K (heun: 2K - 1 score evaluations)
  sampling.time_grid = "uniform"             # ddim / heun: uniform | quadratic | edm
  sampling.ddim_eta = 0.0                    # ddim: 0 deterministic, 1 DDPM-like noise
  sampling.ode_method = "rk45"               # ode: a solver of score_sde.flow.ode_methods()
  sampling.ode_rtol = 1e-5                   # ode: the solver's tolerances
  sampling.ode_atol = 1e-5

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9
  evaluate.end_ckpt = 26
  evaluate.ckpt_wait_secs = 6 * 3600        # eval waiting for a checkpoint gives up after this long with none new
  evaluate.ckpt_id = -1                      # -1: the latest checkpoint (sample mode)
  evaluate.pretrained = ""                   # sample / eval this released checkpoint instead of the workdir's
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.enable_vlb = False               # DDPM's discrete bound (VP models)
  evaluate.vlb_model_var = "fixedlarge"      # fixedlarge (beta_t) | fixedsmall (posterior variance)
  evaluate.vlb_clip_denoised = True          # clip the x0 prediction to the data range (the DDPM code's bpd)
  evaluate.bpd_dataset = "test"              # train | test
  evaluate.bpd_num_repeats = 5               # passes over the test split (the paper averages 5); train: one
  evaluate.bpd_method = "rk45"               # probability-flow solver for bpd: the ODE sampler's RK45 pair
  evaluate.bpd_rtol = 1e-5                   # its tolerances (2021: scipy RK45 at 1e-5)
  evaluate.bpd_atol = 1e-5
  evaluate.bpd_hutchinson = "Rademacher"     # Rademacher | Gaussian | exact (small data only)
  evaluate.uint8_rounding = False            # samples to uint8: False truncates as 2021 did; True rounds
  evaluate.inception_path = ""               # converted FID Inception .npz (scripts/convert_inception_weights.py)
  evaluate.inception_v3_path = ""            # converted Inception-v3 (Keras) .npz, the 256 px configs' network
  evaluate.feature_network = ""              # "" = the 2021 choice for the data set and resolution
  evaluate.stats_dir = ""                    # reference statistics folder; "" = assets/stats in the repository
  evaluate.stats_path = ""                   # one reference statistics file (overrides stats_dir)
  evaluate.classifier_path = ""              # digits: the classifier cache; "" = ~/.cache/score_sde (SCORE_SDE_CACHE)

  # The noise-conditional classifier of class-conditional sampling (--mode train_classifier), WRN-28-10.
  config.classifier = classifier = ml_collections.ConfigDict()
  classifier.blocks_per_group = 4            # (depth - 4) / 6: WRN-28
  classifier.channel_multiplier = 10         # width 10
  classifier.num_classes = 10
  classifier.embedding_size = 128            # Fourier features of log sigma (scale 16)
  classifier.fourier_scale = 16.0
  classifier.batch_size = 128
  classifier.n_iters = 200000
  classifier.lr = 2e-4
  classifier.warmup = 1000
  classifier.grad_clip = 1.0
  classifier.ema_rate = 0.999
  classifier.eps = 1e-5                      # noise levels t ~ U(eps, T)
  classifier.log_freq = 100
  classifier.eval_freq = 5000
  classifier.snapshot_freq = 10000
  classifier.noise_buckets = 5               # test accuracy per bucket of t
  classifier.path = ""                       # "" = <workdir>/classifier
  classifier.guidance_scale = 1.0            # class-conditional sampling: score + scale * grad log p_t(y | x)

  # --mode edit: the controllable-generation and latent tools on real images (score_sde/edit.py).
  config.edit = edit = ml_collections.ConfigDict()
  edit.task = "inpaint"                      # inpaint | colorize | conditional | interpolate | progressive | encode
  edit.input = ""                            # "" = the test split; train | test; or a folder of PNG files
  edit.num_images = 8                        # images edited (conditional, progressive: samples drawn)
  edit.batch_size = 8                        # images per round (one PNG grid + npz each)
  edit.mask = "right_half"                   # inpaint, the part filled in: right_half | left_half | bottom_half |
                                             # center | random
  edit.mask_fraction = 0.5                   # inpaint, mask=random: each pixel is filled in with this probability
  edit.labels = ""                           # conditional: "" = 0..classifier.num_classes - 1, or a comma list "3,7"
  edit.num_interpolations = 8                # interpolate: points along each pair's path, both ends included
  edit.num_records = 8                       # progressive: x0 predictions recorded along the DDPM chain

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CIFAR10"
  data.image_size = 32
  data.num_channels = 3
  data.random_flip = True
  data.centered = False                      # data in [0, 1] (else [-1, 1])
  data.uniform_dequantization = False
  data.data_dir = ""                         # TFDS data_dir ("" -> $TFDS_DATA_DIR or the TFDS default)
  data.tfrecords_path = ""                   # FFHQ / CelebA-HQ: the folder of their *.tfrecords; TFRECORDS: the
                                             # training records (a file, a glob, or a folder of *.tfrecord*)
  # Users' data (score_sde/data_user_sources.py): data.dataset = "IMAGE_FOLDER" or "TFRECORDS".
  data.image_folder = ""                     # IMAGE_FOLDER: a folder of images, any depth (or DIR/train + DIR/test)
  data.eval_fraction = 0.05                  # IMAGE_FOLDER without train/ and test/: the share held out for eval
  data.tfrecords_eval_path = ""              # TFRECORDS: the eval records ("" = the training records)
  data.tfrecords_image_key = "image"         # TFRECORDS: the bytes feature holding the encoded PNG / JPEG
  data.tfrecords_label_key = ""              # TFRECORDS: the int64 label feature ("" = no labels)

  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.dropout = 0.1
  model.embedding_type = "fourier"
  model.ema_rate = 0.9999

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 5000
  optim.grad_clip = 1.0                      # global-norm clipping; < 0 disables

  config.seed = 42
  return config
