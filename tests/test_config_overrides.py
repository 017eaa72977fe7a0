"""Every documented form of a config value, given on the command line (the real flag parser
of `siriib_jax.cli`: ml_collections' `config_flags` over absl) and from Python, is accepted
and passes validation; values outside a key's documented forms are refused by validation."""

import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from siriib_jax import config_validation
from siriib_jax.config_errors import ConfigError
from siriib_jax.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


def parse(monkeypatch, *overrides: str):
  """The config `python main.py --config configs/quickstart.py <overrides>` builds, parsed
  as `cli.py` defines its flag (on a fresh `FlagValues`; config_flags reads the overrides
  from `sys.argv`)."""
  argv = ["main.py", "--config", QUICKSTART, *overrides]
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(argv)
  return values.config


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


# (override, key, value): each form configs/default.py documents.
FORMS = [
    ("--config.attack.unroll=4", "attack.unroll", 4),
    ("--config.attack.unroll=True", "attack.unroll", True),
    ("--config.attack.unroll=false", "attack.unroll", False),
    ("--config.attack.unroll", "attack.unroll", True),
    ("--config.evaluation.unroll=8", "evaluation.unroll", 8),
    ("--config.evaluation.unroll=True", "evaluation.unroll", True),
    ("--config.evaluation.unroll=False", "evaluation.unroll", False),
    # A tuple as one value, as a literal, or empty.
    ("--config.optimizer.decay_epochs=100", "optimizer.decay_epochs", (100,)),
    ("--config.optimizer.decay_epochs=(1.5, 2)", "optimizer.decay_epochs", (1.5, 2)),
    ("--config.optimizer.decay_epochs=(1, 1)", "optimizer.decay_epochs", (1, 1)),
    ("--config.optimizer.decay_epochs=()", "optimizer.decay_epochs", ()),
    ("--config.evaluation.attacks=pgd20", "evaluation.attacks", ("pgd20",)),
    ("--config.evaluation.attacks=('clean', 'l2-pgd20')", "evaluation.attacks",
     ("clean", "l2-pgd20")),
    ("--config.paper.runs=/tmp/baseline", "paper.runs", ("/tmp/baseline",)),
    # A float key given as an int.
    ("--config.attack.eps=1", "attack.eps", 1.0),
    ("--config.evaluation.l2.eps=1", "evaluation.l2.eps", 1.0),
    ("--config.evaluation.checklist.large_eps=0", "evaluation.checklist.large_eps", 0.0),
    ("--config.optimizer.learning_rate=1", "optimizer.learning_rate", 1.0),
]


@pytest.mark.parametrize("override, key, value", FORMS, ids=[f[0] for f in FORMS])
def test_each_documented_form_is_accepted_on_the_command_line(monkeypatch, override, key,
                                                              value):
  config = parse(monkeypatch, override)
  assert _get(config, key) == value and type(_get(config, key)) is type(value)
  config_validation.validate_config(config)


def test_repeated_flags_give_a_tuple(monkeypatch):
  config = parse(monkeypatch, "--config.evaluation.attacks=clean",
                 "--config.evaluation.attacks=cw100")
  assert config.evaluation.attacks == ("clean", "cw100")
  config_validation.validate_config(config)


@pytest.mark.parametrize("key, value", [
    ("attack.unroll", 4), ("attack.unroll", False), ("evaluation.unroll", 2),
    ("evaluation.unroll", True), ("optimizer.decay_epochs", (1, 1.5)),
    ("evaluation.l2.eps", 1), ("attack.eps", 1)])
def test_each_documented_form_is_accepted_from_python(key, value):
  config = default.get_config()
  block, name = key.rsplit(".", 1)
  _get(config, block)[name] = value
  assert _get(config, key) == value
  config_validation.validate_config(config)


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "abc", "(2, 3)"])
@pytest.mark.parametrize("key", ["attack.unroll", "evaluation.unroll"])
def test_an_unroll_outside_bool_or_int_is_refused(monkeypatch, key, value):
  config = parse(monkeypatch, f"--config.{key}={value}")
  with pytest.raises(ConfigError, match=rf"config\.{key} = .*True.*False.*integer ≥ 1"):
    config_validation.validate_config(config)


def test_the_command_line_accepts_an_int_unroll():
  result = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/quickstart.py",
       "--config.attack.unroll=4", "--config.evaluation.unroll=2", "--mode=complexity"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "params" in result.stdout


def test_a_run_trained_with_an_int_unroll_loads_its_config(tmp_path):
  from siriib_jax import run_config  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.attack.unroll, config.evaluation.unroll = 4, True
  run_config.save(config, str(tmp_path))
  loaded = run_config.load(str(tmp_path), default.get_config())
  assert loaded.attack.unroll == 4 and loaded.evaluation.unroll is True
  loaded.attack.unroll = False  # Still a bool-or-int key.
  config_validation.validate_config(loaded)


def test_a_tuple_written_without_quotes_is_refused_with_the_forms_that_work(monkeypatch):
  config = parse(monkeypatch, "--config.evaluation.attacks=(clean,pgd20)")
  assert config.evaluation.attacks == ("(clean,pgd20)",)  # ml_collections: one string.
  with pytest.raises(ConfigError, match=r"a tuple is --config\.evaluation\.attacks="
                                        r"\"\('clean', 'pgd20'\)\" or one"):
    config_validation.validate_config(config)
