"""The one registry idiom of siriib_jax: a read-only mapping from a config name to an entry.

Backbones (`models/backbones.py`), datasets (`data/specs.py`), strategies
(`training/strategies.py`) and attacks (`attacks/registry.py`) are each one `Registry`:

  BACKBONES = Registry("model.name", {"resnet18": ..., "wrn28_10": ...})
  backbone = BACKBONES.lookup(config.model.name)   # ConfigError with "did you mean"

A registry is a `Mapping`, so `name in REGISTRY`, `sorted(REGISTRY)` and `REGISTRY[name]`
work as for a dict; `lookup` is the checked access that config code uses.
"""

from typing import Generic, Iterator, Mapping, TypeVar

from siriib_jax.config_errors import ConfigError, check_choice, did_you_mean

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
  """Name → entry, for the config key `key` (e.g. "model.name").

  Args:
    key: the config key whose values are this registry's names (for error messages), or,
      for a registry that several keys share (attacks), what its names are ("attack").
    entries: the names and their entries, in the order they are listed to users.
    config_key: whether `key` is a config key (the error then says how to override it).
  """

  def __init__(self, key: str, entries: Mapping[str, T], config_key: bool = True):
    self.key = key
    self.config_key = config_key
    self._entries = dict(entries)

  def __getitem__(self, name: str) -> T:
    return self._entries[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.key!r}, {sorted(self._entries)})"

  def lookup(self, name: str, extra: str = "") -> T:
    """The entry called `name`.

    Args:
      name: the config value.
      extra: more allowed forms to name in the error (e.g. "pgd<N>"), if any.

    Raises:
      ConfigError (a ValueError) naming `key`, the value, the known names and the closest.
    """
    if name in self._entries:
      return self._entries[name]
    if not self.config_key:
      known = list(self._entries) + ([extra] if extra else [])
      raise ConfigError(f"unknown {self.key} {name!r}: it must be one of {known}"
                        f"{did_you_mean(name, self._entries)}")
    check_choice(self.key, name, self._entries, extra)
    raise AssertionError("unreachable")  # `check_choice` raises.
