"""Every paper config equals its 2021 config file, value for value (issue 13, item 1).

The 2021 reference is yang-song/score_sde (JAX); its configs are mirrored value for value by the official PyTorch
port yang-song/score_sde_pytorch, whose files (new layout configs/{ve,vp,subvp}/..., and for a few configs only
the older layout configs/{ddpm,ddpmpp,ncsn,ncsnv2,ncsnpp}/...) were read where the JAX file is not at hand.
Keys that exist only in the PyTorch port (config.device) are left out; the JAX-only key training.n_jitted_steps
is in. The tables below are those files' values written out as data, flattened to dotted keys: for each
paper config the whole 2021 config, i.e. every key its file sets or inherits from its defaults file. They are
not derived from our configs. Our configs may carry extra keys of ours (training.conv_impl, eval.ckpt_wait_secs,
sampling.ode_*, ...): only the 2021 keys are compared. DEPARTURES lists the values we keep on purpose.
"""
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[1]
ABSENT = "<absent>"   # our config has no such key (a 2021 typo key, written correctly elsewhere)


def _with(*parts):
  """The dicts merged left to right (a later one overrides)."""
  merged = {}
  for part in parts:
    merged.update(part)
  return merged


# ------------------------------------------------------------------------------------------- 2021 defaults
# configs/default_cifar10_configs.py
CIFAR10 = {
    "training.batch_size": 128,
    "training.n_iters": 1300001,
    "training.snapshot_freq": 50000,
    "training.log_freq": 50,
    "training.eval_freq": 100,
    "training.snapshot_freq_for_preemption": 10000,
    "training.snapshot_sampling": True,
    "training.likelihood_weighting": False,
    "training.continuous": True,
    "training.n_jitted_steps": 5,
    "training.reduce_mean": False,
    "sampling.n_steps_each": 1,
    "sampling.noise_removal": True,
    "sampling.probability_flow": False,
    "sampling.snr": 0.16,
    "eval.begin_ckpt": 9,
    "eval.end_ckpt": 26,
    "eval.batch_size": 1024,
    "eval.enable_sampling": False,
    "eval.num_samples": 50000,
    "eval.enable_loss": True,
    "eval.enable_bpd": False,
    "eval.bpd_dataset": "test",
    "data.dataset": "CIFAR10",
    "data.image_size": 32,
    "data.random_flip": True,
    "data.centered": False,
    "data.uniform_dequantization": False,
    "data.num_channels": 3,
    "model.sigma_min": 0.01,
    "model.sigma_max": 50,
    "model.num_scales": 1000,
    "model.beta_min": 0.1,
    "model.beta_max": 20.0,
    "model.dropout": 0.1,
    "model.embedding_type": "fourier",
    "optim.weight_decay": 0,
    "optim.optimizer": "Adam",
    "optim.lr": 2e-4,
    "optim.beta1": 0.9,
    "optim.eps": 1e-8,
    "optim.warmup": 5000,
    "optim.grad_clip": 1.0,
    "seed": 42,
}

# configs/default_celeba_configs.py: the CIFAR-10 defaults but for these keys
CELEBA = _with(CIFAR10, {
    "sampling.snr": 0.17,
    "eval.begin_ckpt": 1,
    "eval.enable_sampling": True,
    "data.dataset": "CELEBA",
    "data.image_size": 64,
    "model.sigma_max": 90.0,
})

# configs/default_lsun_configs.py: the CIFAR-10 defaults but for these keys
LSUN = _with(CIFAR10, {
    "training.batch_size": 64,
    "training.n_iters": 2400001,
    "training.snapshot_freq_for_preemption": 5000,
    "sampling.snr": 0.075,
    "eval.begin_ckpt": 50,
    "eval.end_ckpt": 96,
    "eval.batch_size": 512,
    "eval.enable_sampling": True,
    "data.dataset": "LSUN",
    "data.image_size": 256,
    "model.sigma_max": 378,
    "model.num_scales": 2000,
    "model.dropout": 0.0,
})

# ----------------------------------------------------------------- blocks the 2021 files repeat verbatim
PC = {"sampling.method": "pc"}
VE_PC = _with(PC, {"sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin"})
EM = _with(PC, {"sampling.predictor": "euler_maruyama", "sampling.corrector": "none"})
ANCESTRAL = _with(PC, {"sampling.predictor": "ancestral_sampling", "sampling.corrector": "none"})
ALD = _with(PC, {"sampling.predictor": "none", "sampling.corrector": "ald"})

# NCSN++ at 32x32 / 64x64 (the model block of ve/cifar10_ncsnpp_continuous.py and its siblings)
NCSNPP = {
    "model.name": "ncsnpp",
    "model.normalization": "GroupNorm",
    "model.nonlinearity": "swish",
    "model.nf": 128,
    "model.ch_mult": (1, 2, 2, 2),
    "model.num_res_blocks": 4,
    "model.attn_resolutions": (16,),
    "model.resamp_with_conv": True,
    "model.conditional": True,
    "model.fir": True,
    "model.fir_kernel": [1, 3, 3, 1],
    "model.skip_rescale": True,
    "model.resblock_type": "biggan",
    "model.progressive": "none",
    "model.progressive_input": "residual",
    "model.progressive_combine": "sum",
    "model.attention_type": "ddpm",
    "model.init_scale": 0.0,
    "model.conv_size": 3,
}
# DDPM++: NCSN++ without FIR and input pyramid, positional embedding (vp/cifar10_ddpmpp*.py)
DDPMPP = _with(NCSNPP, {"model.fir": False, "model.progressive_input": "none",
                        "model.embedding_type": "positional", "model.fourier_scale": 16})
# NCSN++ at 256x256 (ve/bedroom_ncsnpp_continuous.py and its siblings)
NCSNPP_256 = _with(NCSNPP, {"model.ch_mult": (1, 1, 2, 2, 2, 2, 2), "model.num_res_blocks": 2,
                            "model.progressive": "output_skip", "model.progressive_input": "input_skip",
                            "model.fourier_scale": 16})
# the DDPM U-Net (vp/ddpm/*.py, ve/cifar10_ddpm.py)
DDPM = {
    "model.name": "ddpm",
    "model.normalization": "GroupNorm",
    "model.nonlinearity": "swish",
    "model.nf": 128,
    "model.ch_mult": (1, 2, 2, 2),
    "model.num_res_blocks": 2,
    "model.attn_resolutions": (16,),
    "model.resamp_with_conv": True,
    "model.conditional": True,
}
# RefineNet model and optimizer blocks of ve/ncsn/*.py and ve/ncsnv2/*.py
REFINENET = {
    "model.normalization": "InstanceNorm++",
    "model.nonlinearity": "elu",
    "model.nf": 128,
    "model.interpolation": "bilinear",
    "optim.weight_decay": 0,
    "optim.optimizer": "Adam",
    "optim.beta1": 0.9,
    "optim.amsgrad": False,
    "optim.eps": 1e-8,
    "optim.warmup": 0,
    "optim.grad_clip": -1.0,
}

VE_SMLD = {"training.sde": "vesde", "training.continuous": False}
VE_CONT = {"training.sde": "vesde", "training.continuous": True}
VE_MODEL = {"model.scale_by_sigma": True, "model.ema_rate": 0.999}
VP_MODEL = {"model.scale_by_sigma": False, "model.ema_rate": 0.9999, "data.centered": True}


def _vp(sde, continuous):
  return {"training.sde": sde, "training.continuous": continuous, "training.reduce_mean": True}


# ---------------------------------------------------------------------------- 2021 files, one per config
# Standalone file (no defaults): ve/ffhq_ncsnpp_continuous.py (JAX: training.n_jitted_steps = 2).
FFHQ_1024 = {
    "training.batch_size": 8,
    "training.n_iters": 2400001,
    "training.snapshot_freq": 50000,
    "training.log_freq": 50,
    "training.eval_freq": 100,
    "training.snapshot_freq_for_preemption": 5000,
    "training.snapshot_sampling": True,
    "training.sde": "vesde",
    "training.continuous": True,
    "training.likelihood_weighting": False,
    "training.n_jitted_steps": 2,
    "training.reduce_mean": True,
    "sampling.method": "pc",
    "sampling.predictor": "reverse_diffusion",
    "sampling.corrector": "langevin",
    "sampling.probability_flow": False,
    "sampling.snr": 0.15,
    "sampling.n_steps_each": 1,
    "sampling.noise_removal": True,
    "eval.batch_size": 1024,
    "eval.num_samples": 50000,
    "eval.begin_ckpt": 1,
    "eval.end_ckpt": 96,
    "data.dataset": "FFHQ",
    "data.image_size": 1024,
    "data.centered": False,
    "data.random_flip": True,
    "data.uniform_dequantization": False,
    "data.num_channels": 3,
    "data.tfrecords_path": "/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords",
    "model.name": "ncsnpp",
    "model.scale_by_sigma": True,
    "model.sigma_max": 1348,
    "model.num_scales": 2000,
    "model.ema_rate": 0.9999,
    "model.sigma_min": 0.01,
    "model.normalization": "GroupNorm",
    "model.nonlinearity": "swish",
    "model.nf": 16,
    "model.ch_mult": (1, 2, 4, 8, 16, 32, 32, 32),
    "model.num_res_blocks": 1,
    "model.attn_resolutions": (16,),
    "model.dropout": 0.0,
    "model.resamp_with_conv": True,
    "model.conditional": True,
    "model.fir": True,
    "model.fir_kernel": [1, 3, 3, 1],
    "model.skip_rescale": True,
    "model.resblock_type": "biggan",
    "model.progressive": "output_skip",
    "model.progressive_input": "input_skip",
    "model.progressive_combine": "sum",
    "model.attention_type": "ddpm",
    "model.init_scale": 0.0,
    "model.fourier_scale": 16,
    "model.conv_size": 3,
    "model.embedding_type": "fourier",
    "optim.weight_decay": 0,
    "optim.optimizer": "Adam",
    "optim.lr": 2e-4,
    "optim.beta1": 0.9,
    "optim.amsgrad": False,
    "optim.eps": 1e-8,
    "optim.warmup": 5000,
    "optim.grad_clip": 1.0,
    "seed": 42,
}
# Standalone file ve/celebahq_ncsnpp_continuous.py: FFHQ_1024 but for these keys (JAX: n_jitted_steps = 1).
CELEBAHQ_1024 = _with(FFHQ_1024, {
    "training.n_jitted_steps": 1,
    "training.reduce_mean": False,
    "data.dataset": "CelebAHQ",
    "data.tfrecords_path": "/atlas/u/yangsong/celeba_hq/-r10.tfrecords",
})

VE_NCSNPP_CONT = _with(CIFAR10, VE_CONT, VE_PC, NCSNPP, VE_MODEL, {"model.fourier_scale": 16})
VE_NCSNPP_DEEP = _with(VE_NCSNPP_CONT, {"training.n_iters": 950001, "model.num_res_blocks": 8})
VE_BEDROOM = _with(LSUN, VE_CONT, VE_PC, NCSNPP_256, VE_MODEL, {"data.category": "bedroom"})
VE_FFHQ_256 = _with(LSUN, VE_CONT, VE_PC, NCSNPP_256, VE_MODEL, {
    "data.dataset": "FFHQ", "data.image_size": 256, "model.sigma_max": 348,
    "data.tfrecords_path": "/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords"})

NCSN_CIFAR10 = _with(CIFAR10, VE_SMLD, ALD, REFINENET, {
    "sampling.n_steps_each": 100, "sampling.snr": 0.316, "model.name": "ncsn", "model.scale_by_sigma": False,
    "model.sigma_max": 1, "model.num_scales": 10, "model.ema_rate": 0.0, "optim.lr": 1e-3})
NCSN_CIFAR10_124 = _with(NCSN_CIFAR10, {"sampling.n_steps_each": 5, "sampling.snr": 0.176,
                                        "model.sigma_max": 50, "model.num_scales": 232})
NCSN_CELEBA = _with(CELEBA, VE_SMLD, ALD, REFINENET, {
    "sampling.n_steps_each": 100, "sampling.snr": 0.316, "model.name": "ncsn", "model.scale_by_sigma": False,
    "model.sigma_max": 1, "model.num_scales": 10, "model.ema_rate": 0.0, "optim.lr": 1e-3})
NCSN_CELEBA_124 = _with(NCSN_CELEBA, {"sampling.n_steps_each": 5, "sampling.snr": 0.128,
                                      "model.sigma_max": 90.0, "model.num_scales": 500})

VP_DDPMPP_CONT = _with(CIFAR10, _vp("vpsde", True), EM, DDPMPP, VP_MODEL)
VP_DDPMPP_DEEP = _with(VP_DDPMPP_CONT, {"training.n_iters": 950001, "model.num_res_blocks": 8})
VP_NCSNPP_CONT = _with(CIFAR10, _vp("vpsde", True), EM, NCSNPP, VP_MODEL,
                       {"model.embedding_type": "positional", "model.fourier_scale": 16})
VP_NCSNPP_DEEP = _with(VP_NCSNPP_CONT, {"training.n_iters": 950001, "model.num_res_blocks": 8})
DDPM_CIFAR10 = _with(CIFAR10, _vp("vpsde", False), ANCESTRAL, DDPM, VP_MODEL)
DDPM_CIFAR10_CONT = _with(CIFAR10, _vp("vpsde", True), EM, DDPM, VP_MODEL)
DDPM_256 = _with(LSUN, _vp("vpsde", False), ANCESTRAL, DDPM, VP_MODEL, {
    "model.ch_mult": (1, 1, 2, 2, 4, 4), "model.num_scales": 1000, "optim.lr": 2e-5})
SUBVP = {"training.sde": "subvpsde"}

PAPER_2021 = {
    # --- VE (SMLD) ---
    "ve/cifar10_ncsnpp_continuous.py": VE_NCSNPP_CONT,
    "ve/cifar10_ncsnpp_deep_continuous.py": VE_NCSNPP_DEEP,
    "ve/cifar10.py": VE_NCSNPP_DEEP,  # ours only: the flagship alias of ve/cifar10_ncsnpp_deep_continuous.py
    "ve/cifar10_ncsnpp.py": _with(CIFAR10, VE_SMLD, VE_PC, NCSNPP, VE_MODEL, {"model.embedding_type": "positional"}),
    "ve/cifar10_ddpm.py": _with(CIFAR10, VE_SMLD, VE_PC, DDPM, VE_MODEL, {"model.conv_size": 3}),
    # 2021 file: configs/ncsnpp/celeba.py in the older layout
    "ve/celeba_ncsnpp.py": _with(CELEBA, VE_SMLD, VE_PC, NCSNPP, VE_MODEL,
                                 {"model.sigma_begin": 90, "model.embedding_type": "positional"}),
    "ve/bedroom_ncsnpp_continuous.py": VE_BEDROOM,
    "ve/church_ncsnpp_continuous.py": _with(VE_BEDROOM, {"data.category": "church_outdoor", "model.sigma_max": 380}),
    "ve/ffhq_256_ncsnpp_continuous.py": VE_FFHQ_256,
    "ve/celebahq_256_ncsnpp_continuous.py": _with(VE_FFHQ_256, {
        "data.dataset": "CelebAHQ", "data.tfrecords_path": "/home/yangsong/ncsc/celebahq/r08.tfrecords"}),
    "ve/ffhq_ncsnpp_continuous.py": FFHQ_1024,
    "ve/celebahq_ncsnpp_continuous.py": CELEBAHQ_1024,
    # --- NCSN v1 (ve/ncsn/) and NCSNv2 (ve/ncsnv2/) ---
    # (2021's NCSN v1 never ran: its network lacked num_classes. Ours runs; the config values still match.)
    "ve/ncsn/cifar10.py": NCSN_CIFAR10,
    "ve/ncsn/cifar10_5.py": _with(NCSN_CIFAR10, {"model.ema_rate": 0.999}),
    "ve/ncsn/cifar10_124.py": NCSN_CIFAR10_124,
    "ve/ncsn/cifar10_1245.py": _with(NCSN_CIFAR10_124, {"model.ema_rate": 0.999}),
    # 2021 ve/ncsn/celeba.py writes training.loss = 'vesde' (no training.sde)
    "ve/ncsn/celeba.py": _with({k: v for k, v in NCSN_CELEBA.items() if k != "training.sde"},
                               {"training.loss": "vesde"}),
    "ve/ncsn/celeba_5.py": _with(NCSN_CELEBA, {"model.ema_rate": 0.999}),
    "ve/ncsn/celeba_124.py": NCSN_CELEBA_124,
    "ve/ncsn/celeba_1245.py": _with(NCSN_CELEBA_124, {"model.ema_rate": 0.999}),
    "ve/ncsnv2/cifar10.py": _with(CIFAR10, VE_SMLD, ALD, REFINENET, {
        "sampling.n_steps_each": 5, "sampling.snr": 0.176, "model.name": "ncsnv2_64", "model.scale_by_sigma": True,
        "model.num_scales": 232, "model.ema_rate": 0.999, "optim.lr": 1e-4}),
    "ve/ncsnv2/celeba.py": _with(CELEBA, VE_SMLD, ALD, REFINENET, {
        "sampling.n_steps_each": 5, "sampling.snr": 0.128, "model.name": "ncsnv2_64", "model.scale_by_sigma": True,
        "model.num_scales": 500, "model.ema_rate": 0.999, "optim.lr": 1e-4}),
    # 2021 ve/ncsnv2/bedroom.py writes training.continuouse = False, so training.continuous stays True
    "ve/ncsnv2/bedroom.py": _with(LSUN, ALD, REFINENET, {
        "training.batch_size": 128, "training.sde": "vesde", "training.continuouse": False,
        "sampling.n_steps_each": 3, "sampling.snr": 0.095, "data.category": "bedroom", "data.image_size": 128,
        "model.name": "ncsnv2_128", "model.scale_by_sigma": True, "model.sigma_max": 190, "model.num_scales": 1086,
        "model.ema_rate": 0.9999, "model.sigma_min": 0.01, "optim.lr": 1e-4, "optim.grad_clip": -1}),
    # --- VP (DDPM) ---
    "vp/cifar10_ddpmpp.py": _with(CIFAR10, _vp("vpsde", False), ANCESTRAL, DDPMPP, VP_MODEL),
    "vp/cifar10_ddpmpp_continuous.py": VP_DDPMPP_CONT,
    "vp/cifar10.py": VP_DDPMPP_CONT,  # ours only: the flagship alias of vp/cifar10_ddpmpp_continuous.py
    "vp/cifar10_ddpmpp_deep_continuous.py": VP_DDPMPP_DEEP,
    # 2021 file: configs/ncsnpp/cifar10_vp.py in the older layout (the copy of configs/vp/cifar10_ncsnpp.py in
    # the index holds a later debugging edit, nf = 4 and ch_mult = (1, 2); the older file has the paper values)
    "vp/cifar10_ncsnpp.py": _with(CIFAR10, _vp("vpsde", False), PC, NCSNPP, VP_MODEL, {
        "sampling.predictor": "reverse_diffusion", "sampling.corrector": "none", "model.embedding_type": "positional"}),
    "vp/cifar10_ncsnpp_continuous.py": VP_NCSNPP_CONT,
    "vp/cifar10_ncsnpp_deep_continuous.py": VP_NCSNPP_DEEP,
    "vp/ddpm/cifar10.py": DDPM_CIFAR10,
    "vp/ddpm/cifar10_continuous.py": DDPM_CIFAR10_CONT,
    "vp/ddpm/cifar10_unconditional.py": _with(DDPM_CIFAR10, {"model.conditional": False}),
    "vp/ddpm/bedroom.py": _with(DDPM_256, {"data.category": "bedroom"}),
    "vp/ddpm/church.py": _with(DDPM_256, {"data.category": "church_outdoor"}),
    "vp/ddpm/celebahq.py": _with(DDPM_256, {"data.dataset": "CelebAHQ", "data.image_size": 256,
                                            "data.tfrecords_path": "/atlas/u/yangsong/celeba_hq/-r10.tfrecords"}),
    # --- sub-VP ---
    "subvp/cifar10_ddpm_continuous.py": _with(DDPM_CIFAR10_CONT, SUBVP),
    "subvp/cifar10_ddpmpp_continuous.py": _with(VP_DDPMPP_CONT, SUBVP),
    "subvp/cifar10_ddpmpp_deep_continuous.py": _with(VP_DDPMPP_DEEP, SUBVP),
    "subvp/cifar10.py": _with(VP_DDPMPP_DEEP, SUBVP),  # ours only: the flagship alias of the deep DDPM++ one
    "subvp/cifar10_ncsnpp_continuous.py": _with(VP_NCSNPP_CONT, SUBVP),
    "subvp/cifar10_ncsnpp_deep_continuous.py": _with(VP_NCSNPP_DEEP, SUBVP),
}

# 2021 configs we do not ship: experiments of the PyTorch port (not of the paper, not in the JAX code).
SKIPPED_2021 = {
    "default_xarray_configs.py, ve/xarray_*.py, subvp/xarray_*.py": "PyTorch-port-only xarray-data experiments",
    "numeric/cifar10_ncsnpp.py": "PyTorch-port-only numerical experiment",
}

# ------------------------------------------------------------------------------ values we keep on purpose
# (config, key) -> (our value, reason). Our value is asserted too, so a departure cannot drift.
_CKPT_RANGE = ("2021's checkpoint range lies beyond n_iters // snapshot_freq (never written; "
               "score_sde.checkpoint_wait.checkpoint_steps refuses it): the last ones that exist")
_TFRECORDS = "2021 hard-codes the author's local path; ours is set on the command line"
_LSUN_FAMILY = ["ve/bedroom_ncsnpp_continuous.py", "ve/church_ncsnpp_continuous.py",
                "ve/ffhq_256_ncsnpp_continuous.py", "ve/celebahq_256_ncsnpp_continuous.py", "vp/ddpm/bedroom.py",
                "vp/ddpm/church.py", "vp/ddpm/celebahq.py", "ve/ncsnv2/bedroom.py"]
_DEEP = ["ve/cifar10_ncsnpp_deep_continuous.py", "ve/cifar10.py", "vp/cifar10_ddpmpp_deep_continuous.py",
         "vp/cifar10_ncsnpp_deep_continuous.py", "subvp/cifar10_ddpmpp_deep_continuous.py", "subvp/cifar10.py",
         "subvp/cifar10_ncsnpp_deep_continuous.py"]
_1024 = ["ve/ffhq_ncsnpp_continuous.py", "ve/celebahq_ncsnpp_continuous.py"]

DEPARTURES = {
    **{(name, "eval.begin_ckpt"): (48, _CKPT_RANGE + " (2,400,001 steps: 48)") for name in _LSUN_FAMILY},
    **{(name, "eval.end_ckpt"): (48, _CKPT_RANGE + " (2,400,001 steps: 48)") for name in _LSUN_FAMILY + _1024},
    **{(name, "eval.end_ckpt"): (19, _CKPT_RANGE + " (950,001 steps: 19)") for name in _DEEP},
    **{(name, "eval.batch_size"): (8, "2021's eval batch of 1024 images of 1024x1024 does not fit an accelerator "
                                      "(64 GiB per 16-channel activation); no FID was reported at 1024px")
       for name in _1024},
    **{(name, "data.tfrecords_path"): ("", _TFRECORDS) for name in _1024 + [
        "ve/ffhq_256_ncsnpp_continuous.py", "ve/celebahq_256_ncsnpp_continuous.py", "vp/ddpm/celebahq.py"]},
    ("ve/ncsn/celeba.py", "training.loss"): (
        ABSENT, "2021 misspells training.sde as training.loss (so its run had no SDE); ours sets training.sde"),
    ("ve/ncsnv2/bedroom.py", "training.continuouse"): (
        ABSENT, "2021 misspells training.continuous; ours writes the key it meant"),
    ("ve/ncsnv2/bedroom.py", "training.continuous"): (
        False, "the typo left 2021 on continuous labels, which an NCSNv2 (integer noise labels) cannot take"),
    ("ve/celeba_ncsnpp.py", "model.sigma_begin"): (
        ABSENT, "an NCSNv2-era name read by nothing; the sigma_max it means (90) is inherited, in both"),
}


# --------------------------------------------------------------------------------------------------- tests
def _config_files():
  files = set()
  for path in (ROOT / "configs").rglob("*.py"):
    if path.name == "__init__.py" or path.name == "archs.py" or path.name.startswith("default_"):
      continue
    if path.name in ("digits.py", "image_folder.py"):  # ours only (embedded digits, users' data), no 2021 counterpart
      continue
    files.add(path.relative_to(ROOT / "configs").as_posix())
  return files


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _ours(name):
  module = importlib.import_module("configs." + name.removesuffix(".py").replace("/", "."))
  return _flatten(module.get_config().to_dict())


def _norm(value):
  return tuple(_norm(v) for v in value) if isinstance(value, (list, tuple)) else value


def _same(ours, expected):
  """Equal by value (tuples and lists alike, ints and floats exactly); a bool only equals a bool."""
  ours, expected = _norm(ours), _norm(expected)
  if isinstance(ours, bool) != isinstance(expected, bool):
    return False
  return ours == expected


def test_every_paper_config_is_in_the_table():
  assert set(PAPER_2021) == _config_files()


def test_departures_name_2021_keys_and_differ_from_them():
  for (name, key), (ours, reason) in DEPARTURES.items():
    assert name in PAPER_2021, name
    assert key in PAPER_2021[name], (name, key)
    assert not _same(ours, PAPER_2021[name][key]), (name, key, "not a departure: drop it")
    assert reason


@pytest.mark.parametrize("name", sorted(PAPER_2021))
def test_config_equals_2021(name):
  ours = _ours(name)
  mismatches = []
  for key, value_2021 in sorted(PAPER_2021[name].items()):
    expected, reason = DEPARTURES.get((name, key), (value_2021, None))
    got = ours.get(key, ABSENT)
    if not _same(got, expected):
      mismatches.append(f"{key}: ours {got!r}, 2021 {value_2021!r}" + (f" (departure kept: {expected!r})"
                                                                         if reason else ""))
  assert not mismatches, f"configs/{name} differs from its 2021 file:\n  " + "\n  ".join(mismatches)
