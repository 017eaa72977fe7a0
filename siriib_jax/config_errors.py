"""The errors a user sees and can fix (`UserError`; the command line prints its message and
exits with status 2), `ConfigError` for bad configuration raised before anything is
compiled, and the "did you mean" hint every choice check gives."""

import difflib
from typing import Any, Iterable


class UserError(Exception):
  """An error whose message tells the user what to fix (a config key, a checkpoint, a model
  whose loss became non-finite): the base of every error the command line reports without a
  traceback."""


class ConfigError(UserError, ValueError):
  """A config value is wrong. The message names the key, the value and what is allowed."""


def fail(key: str, value: Any, allowed: str) -> None:
  """Raises `ConfigError` for `config.<key> = value`, saying what `allowed` values are."""
  raise ConfigError(f"config.{key} = {value!r} is not valid: {allowed}. "
                    f"Fix it in the config file or override it with --config.{key}=...")


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
  """" (did you mean 'x'?)" for the choice closest to `value`, or "" if none is close."""
  names = [str(c) for c in choices]
  close = difflib.get_close_matches(str(value), names, n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(key: str, value: Any, choices: Iterable[Any], extra: str = "") -> None:
  """`value` must be one of `choices` (or of the forms `extra` describes, checked by the
  caller); the error names the closest choice."""
  choices = list(choices)
  if value not in choices:
    listed = choices + ([extra] if extra else [])
    fail(key, value, f"it must be one of {listed}{did_you_mean(value, choices)}")
