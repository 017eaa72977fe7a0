"""One error type for bad configuration, raised before anything is compiled."""

from typing import Any, Iterable


class ConfigError(ValueError):
  """A config value is wrong. The message names the key, the value and what is allowed."""


def fail(key: str, value: Any, allowed: str) -> None:
  """Raises `ConfigError` for `config.<key> = value`, saying what `allowed` values are."""
  raise ConfigError(f"config.{key} = {value!r} is not valid: {allowed}. "
                    f"Fix it in the config file or override it with --config.{key}=...")


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
  """`value` must be one of `choices`."""
  choices = list(choices)
  if value not in choices:
    fail(key, value, f"it must be one of {choices}")
