"""Every shipped config loads, validates (SDE, model knobs, loss) and documents its run command."""
import importlib
import pathlib

import jax
import pytest

from score_sde import config_checks, sde_lib
from score_sde.models import utils as mutils

ROOT = pathlib.Path(__file__).parents[1]
CONFIG_FILES = sorted(p for p in (ROOT / "configs").rglob("*.py")
                      if p.name != "__init__.py" and "default_" not in p.name and p.name != "archs.py")


def load(path):
  module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
  return module, module.get_config()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_validates_and_documents_its_command(path):
  module, config = load(path)
  sde, model = config_checks.validate_config(config, num_devices=1)
  assert isinstance(sde, sde_lib.SDE) and model is not None
  relative = path.relative_to(ROOT)
  assert f"python main.py --config {relative} --mode train" in module.__doc__ or path.name in (
      "cifar10.py",) and "Flagship" in module.__doc__


def test_flagship_aliases():
  expected = {"vp": ("vpsde", 4, "positional"), "subvp": ("subvpsde", 8, "positional"), "ve": ("vesde", 8, "fourier")}
  for sde_dir, (sde_name, blocks, embedding) in expected.items():
    _, config = load(ROOT / "configs" / sde_dir / "cifar10.py")
    assert (config.training.sde, config.model.num_res_blocks, config.model.embedding_type) == (sde_name, blocks, embedding)
    assert config.model.name == "ncsnpp" and config.training.continuous


@pytest.mark.parametrize("name,expected", [
    ("vp/cifar10.py", 61_804_419),
    ("subvp/cifar10.py", 106_632_579),
    ("ve/cifar10.py", 107_587_075),
    ("vp/ddpm/cifar10.py", 35_218_947),
    ("ve/ncsnv2/cifar10.py", 33_970_563),
])
def test_paper_config_parameter_counts(name, expected):
  _, config = load(ROOT / "configs" / name)
  model = mutils.create_model(config)
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  label_dtype = "float32" if config.training.continuous else "int32"
  params = jax.eval_shape(lambda: mutils.init_params(model, jax.random.PRNGKey(0), shape, label_dtype))
  assert mutils.count_params(params) == expected


def test_bad_configs_fail_before_any_compile():
  _, config = load(ROOT / "configs" / "vp" / "digits.py")
  config.model.name = "unet9000"
  with pytest.raises(ValueError, match=r"config.model.name='unet9000' is not a registered model; choose one of \["):
    config_checks.validate_config(config, num_devices=1)
  _, config = load(ROOT / "configs" / "vp" / "digits.py")
  with pytest.raises(ValueError, match=r"training.batch_size=64 must be a positive multiple of the device count \(6\)"):
    config_checks.validate_config(config, num_devices=6)
  config.training.continuous = False
  config.training.sde = "subvpsde"
  with pytest.raises(ValueError, match="training.continuous=False is defined for"):
    config_checks.validate_config(config, num_devices=1)


@pytest.mark.parametrize("name", ["ve/ncsnv2/cifar10.py", "ve/ncsn/cifar10.py"])
def test_refinenets_reject_continuous_labels(name):
  _, config = load(ROOT / "configs" / name)
  config.training.continuous = True
  with pytest.raises(ValueError, match="takes integer noise-level labels"):
    config_checks.validate_config(config, num_devices=1)


def test_an_unknown_sampler_is_refused_before_anything_runs():
  from configs.vp import digits  # pylint: disable=import-outside-toplevel
  from score_sde import config_checks  # pylint: disable=import-outside-toplevel
  config = digits.get_config()
  config.sampling.method = "euler"
  # (other tests may register extra samplers in this process: match the registered names loosely)
  with pytest.raises(ValueError, match=r"sampling.method='euler' is not one of \['ddim', 'heun', 'ode', 'pc'"):
    config_checks.validate_config(config)
