"""The command line (`siriib_jax/cli.py`): one table of modes, one error type caught."""

import subprocess
import sys

import pytest

from siriib_jax import cli, runtime
from siriib_jax.checkpointing import CheckpointError
from siriib_jax.config_errors import ConfigError, UserError
from siriib_jax.data import DatasetNotFoundError
from siriib_jax.train import NonFiniteLossError
from tests.helpers import REPO


def test_every_error_a_user_can_fix_is_a_user_error():
  for error in (ConfigError, DatasetNotFoundError, CheckpointError, NonFiniteLossError):
    assert issubclass(error, UserError), error


def test_the_mode_flag_offers_exactly_the_commands_of_the_table():
  assert set(cli.flags.FLAGS["mode"].parser.enum_values) == set(cli.COMMANDS)
  assert [m for m, c in cli.COMMANDS.items() if not c.needs_workdir] == ["complexity"]


@pytest.mark.parametrize("mode, message", [("eval", "checkpoint"), ("export", "checkpoint")])
def test_a_user_error_exits_2_with_its_message_and_no_traceback(tmp_path, mode, message):
  result = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/quickstart.py", f"--mode={mode}",
       f"--workdir={tmp_path / 'empty'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error:" in result.stderr and message in result.stderr.lower()
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("environ, expected", [
    ({"HOME": "/home/u"}, "/home/u/.cache/siriib_jax/xla"),
    ({"HOME": "/home/u", "XDG_CACHE_HOME": "/c"}, "/c/siriib_jax/xla"),
    ({"SIRIIB_JAX_COMPILATION_CACHE": "/mine"}, "/mine"),
    ({"SIRIIB_JAX_COMPILATION_CACHE": "off"}, None),
    ({"JAX_COMPILATION_CACHE_DIR": "/jax"}, None),
])
def test_compilation_cache_folder_and_how_to_turn_it_off(monkeypatch, environ, expected):
  monkeypatch.setattr(runtime.os.path, "expanduser",
                      lambda p: p.replace("~", environ.get("HOME", "/root")))
  assert runtime.compilation_cache_dir(environ) == expected
