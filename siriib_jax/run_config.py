"""A run's config, kept in its workdir: `train_and_evaluate` writes `workdir/config.json`, and
commands that analyse finished runs (`--mode=paper`) rebuild the run's model from it.

JSON has no tuples: `load` restores them where the project's defaults hold a tuple, so the
config that comes back passes the same checks as the one that trained.
"""

import copy
import json
import os

import ml_collections

FILENAME = "config.json"


def save(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes `config` to `workdir/config.json` (overwriting it); returns the path."""
  path = os.path.join(workdir, FILENAME)
  with open(path, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  return path


def _restore(value, template):
  if isinstance(value, dict):
    return {k: _restore(v, template.get(k) if isinstance(template, (dict, ml_collections.ConfigDict))
                        else None) for k, v in value.items()}
  if isinstance(value, list) and (isinstance(template, tuple) or template is None):
    return tuple(_restore(v, None) for v in value)
  return value


def load(workdir: str, defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config that trained the run in `workdir`: `defaults` updated with its `config.json`
  (keys the file lacks — written by an older version — keep their defaults).

  Raises:
    FileNotFoundError: `workdir` has no `config.json` (a run trained before it was kept, or
      not a training workdir); the message says which file is missing.
  """
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {workdir!r} is not a training run of this version of "
        f"siriib_jax (train_and_evaluate writes its config there). Train the run again, or "
        f"write its config there with siriib_jax.run_config.save(config, workdir).")
  with open(path) as f:
    values = json.load(f)
  # A deep copy keeps the typeless keys (`configs/default.bool_or_int`), which resolving
  # the references would type by their default.
  config = copy.deepcopy(defaults)
  with config.unlocked():
    config.update_from_flattened_dict(_flatten(_restore(values, defaults.to_dict())))
  return config


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
