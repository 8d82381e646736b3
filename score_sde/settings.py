"""Typed, frozen settings read from a config in one place, with the defaults of every optional key.

A config (ml_collections) is what a user writes and overrides on the command line; library code reads these
settings instead, so a default lives here once rather than at every `config.x.get(key, default)`. Each
section is a frozen dataclass built by `from_config(config)`: keys the config lacks take the field's default
(older configs, including the 2021 ones, keep working), fields without a default are required, and every value
is converted to the field's type with a one-line error naming the key when it cannot be. Keys a config carries
that a section does not name (2021 keys we do not use, a model's architecture knobs) are left to their readers.
"""
import dataclasses
import typing
from typing import ClassVar

_MISSING = dataclasses.MISSING


def _convert(value, kind, key):
  """`value` as `kind` (bool, int, float, str or a tuple type); a one-line ValueError naming `key` if not."""
  if kind is bool:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
      return bool(value)
    raise ValueError(f"{key}={value!r} must be True or False.")
  if kind is int:
    if isinstance(value, bool) or not float(value).is_integer():
      raise ValueError(f"{key}={value!r} must be an integer.")
    return int(value)
  if kind is float:
    try:
      return float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{key}={value!r} must be a number.") from None
  if kind is str:
    if not isinstance(value, str):
      raise ValueError(f"{key}={value!r} must be a string.")
    return value
  raise TypeError(f"settings field {key} has unsupported type {kind!r}")


def _read(cls, section, prefix):
  """An instance of the dataclass `cls` from the config section `section` (a ConfigDict or a dict)."""
  hints = typing.get_type_hints(cls)
  values = {}
  for field in dataclasses.fields(cls):
    key = f"{prefix}.{field.name}"
    if section is not None and field.name in section:
      values[field.name] = _convert(section[field.name], hints[field.name], key)
    elif field.default is _MISSING:
      raise ValueError(f"{key} is missing from the config; set it (e.g. --config.{key}=...).")
  return cls(**values)


class _Section:
  """A config section's settings: `from_config(config)` reads `config[SECTION]` into the dataclass."""
  SECTION: ClassVar[str]

  @classmethod
  def from_config(cls, config):
    return _read(cls, config[cls.SECTION] if cls.SECTION in config else None, cls.SECTION)


@dataclasses.dataclass(frozen=True)
class TrainingSettings(_Section):
  """`config.training`: the objective, the run's length and its events."""
  SECTION: ClassVar[str] = "training"
  sde: str
  continuous: bool = True                 # continuous-time labels (else the discrete SMLD / DDPM chain)
  reduce_mean: bool = False
  likelihood_weighting: bool = False
  batch_size: int = 128
  n_iters: int = 1300001
  n_jitted_steps: int = 5
  log_freq: int = 50
  eval_freq: int = 100
  snapshot_freq: int = 50000
  snapshot_freq_for_preemption: int = 10000
  snapshot_sampling: bool = True
  init_from: str = ""                     # start from this checkpoint (2021 Flax, PyTorch port .pth, Orbax)
  conv_impl: str = "auto"                 # how the train step computes convs / GroupNorm: auto | xla | onednn
  chunk_loop: str = "auto"                # how a chunk of n_jitted_steps runs: scan | unroll | auto
  remat: bool = False                     # rematerialise residual blocks in the train step's backward pass
  compute_dtype: str = "float32"          # the train step's compute dtype: float32 | bfloat16
  grad_accum_steps: int = 1               # micro-batches per optimizer update



@dataclasses.dataclass(frozen=True)
class SamplingSettings(_Section):
  """`config.sampling`: which sampler and its knobs (each sampler reads the fields it documents)."""
  SECTION: ClassVar[str] = "sampling"
  method: str = "pc"                      # a name in sampling.registered_samplers()
  predictor: str = "euler_maruyama"
  corrector: str = "none"
  n_steps_each: int = 1
  noise_removal: bool = True
  probability_flow: bool = False
  snr: float = 0.16
  num_steps: int = 50                     # ddim / heun
  time_grid: str = "uniform"              # ddim / heun: uniform | quadratic | edm
  ddim_eta: float = 0.0
  ode_method: str = "rk45"                # ode: a solver name of flow.ode_methods()
  ode_rtol: float = 1e-5
  ode_atol: float = 1e-5

  @classmethod
  def from_config(cls, config):
    settings = super().from_config(config)
    return dataclasses.replace(settings, method=settings.method.lower())


@dataclasses.dataclass(frozen=True)
class EvalSettings(_Section):
  """`config.eval`: which checkpoints, which metrics, and the conventions they are computed with."""
  SECTION: ClassVar[str] = "eval"
  begin_ckpt: int = 9
  end_ckpt: int = 26
  ckpt_wait_secs: float = 6 * 3600
  ckpt_id: int = -1
  pretrained: str = ""
  batch_size: int = 1024
  enable_sampling: bool = False
  num_samples: int = 50000
  enable_loss: bool = True
  enable_bpd: bool = False
  enable_vlb: bool = False
  vlb_model_var: str = "fixedlarge"
  vlb_clip_denoised: bool = True
  bpd_dataset: str = "test"
  bpd_num_repeats: int = 5
  bpd_method: str = "rk45"
  bpd_rtol: float = 1e-5
  bpd_atol: float = 1e-5
  bpd_hutchinson: str = "Rademacher"
  uint8_rounding: bool = False            # False truncates to uint8 as the 2021 code did
  inception_path: str = ""
  inception_v3_path: str = ""
  feature_network: str = ""               # "" = chosen from the data set and resolution
  stats_dir: str = ""
  stats_path: str = ""
  classifier_path: str = ""



@dataclasses.dataclass(frozen=True)
class DataSettings(_Section):
  """`config.data`: the data set, its shape and preprocessing, and where it is read from."""
  SECTION: ClassVar[str] = "data"
  dataset: str
  image_size: int
  num_channels: int
  random_flip: bool = True
  centered: bool = False
  uniform_dequantization: bool = False
  data_dir: str = ""                      # TFDS data_dir ("" -> $TFDS_DATA_DIR or the TFDS default)
  tfrecords_path: str = ""                # FFHQ / CelebA-HQ / TFRECORDS: TFRecords (a file, glob or folder)
  category: str = "bedroom"               # LSUN
  image_folder: str = ""                  # IMAGE_FOLDER: the folder of images (local or gs://)
  eval_fraction: float = 0.05             # IMAGE_FOLDER without train/ + test/: the share held out for eval
  tfrecords_eval_path: str = ""           # TFRECORDS: the eval split's files ("" = the training files)
  tfrecords_image_key: str = "image"      # TFRECORDS: the bytes feature of the encoded image
  tfrecords_label_key: str = ""           # TFRECORDS: the int64 label feature ("" = no labels)



@dataclasses.dataclass(frozen=True)
class ClassifierSettings(_Section):
  """`config.classifier`: the noise-conditional classifier (`--mode train_classifier`); WRN-28-10 by default."""
  SECTION: ClassVar[str] = "classifier"
  blocks_per_group: int = 4               # (depth - 4) / 6
  channel_multiplier: int = 10            # width
  num_classes: int = 10
  embedding_size: int = 128               # Fourier frequencies of log sigma
  fourier_scale: float = 16.0
  batch_size: int = 128
  n_iters: int = 200000
  lr: float = 2e-4
  warmup: int = 1000
  grad_clip: float = 1.0
  ema_rate: float = 0.999
  eps: float = 1e-5                       # noise levels are drawn at t ~ U(eps, T)
  log_freq: int = 100
  eval_freq: int = 5000
  snapshot_freq: int = 10000
  noise_buckets: int = 5                  # accuracy reported per bucket of t in [eps, T]
  path: str = ""                          # "" = <workdir>/classifier (where train_classifier writes it)
  guidance_scale: float = 1.0             # class-conditional sampling: score + scale * grad log p_t(y | x)


@dataclasses.dataclass(frozen=True)
class EditSettings(_Section):
  """`config.edit`: `--mode edit`, the controllable-generation and latent tools on real images (`edit.py`)."""
  SECTION: ClassVar[str] = "edit"
  task: str = "inpaint"                   # inpaint | colorize | conditional | interpolate | progressive | encode
  input: str = ""                         # "" = the test split; train | test; or a folder of PNG files
  num_images: int = 8                     # images edited (conditional, progressive: samples drawn)
  batch_size: int = 8                     # images per round (one PNG grid and npz each)
  mask: str = "right_half"                # inpaint, the part filled in: right_half | left_half | bottom_half |
                                          # center | random
  mask_fraction: float = 0.5              # inpaint, mask=random: each pixel is filled in with this probability
  labels: str = ""                        # conditional: "" = 0..classifier.num_classes - 1, or a comma list "3,7"
  num_interpolations: int = 8             # interpolate: points along each pair's path, both ends included
  num_records: int = 8                    # progressive: x0 predictions recorded along the chain (<= num_scales)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every section at once: `Settings.from_config(config)`."""
  training: TrainingSettings
  sampling: SamplingSettings
  eval: EvalSettings
  data: DataSettings
  seed: int = 42

  @classmethod
  def from_config(cls, config):
    seed = _convert(config["seed"], int, "seed") if "seed" in config else cls.seed
    return cls(TrainingSettings.from_config(config), SamplingSettings.from_config(config),
               EvalSettings.from_config(config), DataSettings.from_config(config), seed)
