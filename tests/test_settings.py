"""settings.py: the one place a config becomes typed, frozen settings with the defaults of optional keys."""
import ast
import dataclasses
import glob
import os

import ml_collections
import pytest

from configs import default_cifar10_configs, default_digits_configs
from configs.vp import digits as vp_digits
from score_sde import sampling, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = {"training": settings.TrainingSettings, "sampling": settings.SamplingSettings,
            "eval": settings.EvalSettings, "data": settings.DataSettings}


@pytest.mark.parametrize("module", [default_cifar10_configs, default_digits_configs])
def test_defaults_agree_with_the_default_configs(module):
  """A key both name has one default: what a config leaving it out gets equals what the defaults file sets."""
  config = module.get_default_configs()
  for name, cls in SECTIONS.items():
    for field in dataclasses.fields(cls):
      if field.default is dataclasses.MISSING or field.name not in config[name]:
        continue
      if module is default_digits_configs and field.name in ("batch_size", "num_samples", "begin_ckpt",
                                                             "end_ckpt", "n_iters", "snapshot_freq",
                                                             "snapshot_freq_for_preemption", "eval_freq",
                                                             "n_jitted_steps", "random_flip", "centered",
                                                             "reduce_mean", "ckpt_wait_secs"):
        continue  # the digits defaults size a run for this machine on purpose
      assert config[name][field.name] == field.default, (name, field.name)


@pytest.mark.parametrize("section", ["training", "sampling", "eval", "classifier", "data"])
def test_every_setting_can_be_overridden_on_the_command_line(section):
  """Overrides (--config.<section>.<key>) reach only keys the config file defines, and error messages name
  settings to change: every field of these sections is in the defaults every config builds on."""
  config = default_cifar10_configs.get_default_configs()
  cls = SECTIONS.get(section) or settings.ClassifierSettings
  missing = [f.name for f in dataclasses.fields(cls) if f.name not in config[section] and
             (section, f.name) != ("data", "category")]  # LSUN's alone, set by its configs
  assert all(config[section][f.name] == f.default for f in dataclasses.fields(cls)
             if section == "classifier"), "the classifier defaults differ from ClassifierSettings'"
  assert not missing, (section, missing)


def test_a_config_without_the_optional_keys_gets_the_defaults():
  config = vp_digits.get_config()
  for key in ("ode_method", "ode_rtol", "num_steps", "time_grid", "ddim_eta"):
    if key in config.sampling:
      del config.sampling[key]
  for key in ("bpd_method", "uint8_rounding", "pretrained", "vlb_clip_denoised"):
    del config.eval[key]
  del config.training.conv_impl
  s = settings.Settings.from_config(config)
  assert (s.sampling.ode_method, s.sampling.ode_rtol, s.sampling.num_steps, s.sampling.time_grid) == (
      "rk45", 1e-5, 50, "uniform")
  assert (s.eval.bpd_method, s.eval.uint8_rounding, s.eval.pretrained, s.eval.vlb_clip_denoised) == (
      "rk45", False, "", True)
  assert s.training.conv_impl == "auto"
  assert s.data.image_size == config.data.image_size and s.training.sde == "vpsde"
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.sampling.method = "ode"  # type: ignore[misc]


def test_values_are_typed_and_bad_ones_get_one_line():
  config = vp_digits.get_config()
  config.sampling.method = "ODE"
  config.eval.ckpt_wait_secs = 10
  s = settings.Settings.from_config(config)
  assert s.sampling.method == "ode" and isinstance(s.eval.ckpt_wait_secs, float)
  assert sampling.uses_probability_flow(config)
  bad = ml_collections.ConfigDict({"sde": "vpsde", "n_iters": 2.5})
  with pytest.raises(ValueError, match=r"^training.n_iters=2.5 must be an integer\.$"):
    settings.TrainingSettings.from_config(ml_collections.ConfigDict({"training": bad}))
  with pytest.raises(ValueError, match=r"^training.continuous='yes' must be True or False\.$"):
    settings.TrainingSettings.from_config({"training": {"sde": "vpsde", "continuous": "yes"}})
  with pytest.raises(ValueError, match=r"^training.sde is missing from the config"):
    settings.TrainingSettings.from_config({"training": {}})


def test_library_code_reads_no_optional_key_with_an_inline_default():
  """No `config.<section>.get(key, default)` / `getattr(config..., default)` outside settings.py and the
  models' own from_config (a network's fields are its settings, with their defaults)."""
  offenders = []
  for path in glob.glob(os.path.join(ROOT, "score_sde", "**", "*.py"), recursive=True):
    rel = os.path.relpath(path, ROOT)
    if rel in ("score_sde/settings.py",) or rel.startswith("score_sde/models/"):
      continue
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if not isinstance(node, ast.Call):
        continue
      text = ast.unparse(node.func)
      if (text.startswith("config.") and text.endswith(".get")) or (
          text == "getattr" and node.args and ast.unparse(node.args[0]).startswith("config")):
        offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
  assert not offenders, offenders
