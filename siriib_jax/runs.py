"""One way to open a training run: the model its config builds, the weights of its
checkpoint, its kind (baseline, SiRIIB plug-in, SR purifier) and its name.

    run = runs.open_run(workdir)                    # with the run's own config.json
    run = runs.open_run(workdir, config)            # with a config given on the command line
    logits = run.model.apply(run.variables, images).logits
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections

from siriib_jax import run_config
from siriib_jax.checkpointing import load_variables
from siriib_jax.models import create_model

BASELINE, SIRIIB, PURIFIER = "baseline", "SiRIIB", "purifier"
# The paper's names of the backbones (Tables 1-9).
PAPER_NAMES = {"resnet18": "ResNet-18", "wrn28_10": "WRN-28-10", "wrn34_10": "WRN-34-10",
               "preact_resnet18": "PreAct ResNet-18"}


def kind(model: ml_collections.ConfigDict) -> str:
  """BASELINE, SIRIIB or PURIFIER from a `config.model` block."""
  if not model.siriib.enabled:
    return BASELINE
  return PURIFIER if model.siriib.get("placement", "plugin") == "purifier" else SIRIIB


def display_name(model: ml_collections.ConfigDict, style: str = "paper") -> str:
  """The model's name in the reports.

  Args:
    model: a `config.model` block.
    style: "paper" (`ResNet-18-SR`, `WRN-28-10-SR-L`, `ResNet-18 + SR purifier`), "short"
      (`resnet18-SR`, the evaluation report's heading) or "complexity"
      (`resnet18-SR(base)`, `resnet18+SR-purifier`).
  Raises:
    ValueError: an unknown `style`.
  """
  role, variant = kind(model), model.siriib.variant
  if style == "paper":
    name = PAPER_NAMES.get(model.name, model.name)
    if role == SIRIIB:
      return name + "-SR" + ("" if variant == "base" else f"-{variant}")
    return name + (" + SR purifier" if role == PURIFIER else "")
  if style == "short":
    return model.name + ("" if role == BASELINE else "-SR")
  if style == "complexity":
    return model.name + {BASELINE: "", SIRIIB: f"-SR({variant})",
                         PURIFIER: "+SR-purifier"}[role]
  raise ValueError(f"style must be 'paper', 'short' or 'complexity', got {style!r}")


def averaging_enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` trains and evaluates a weight average (`weight_averaging.decay > 0`)."""
  return config.weight_averaging.decay > 0


def weights_name(config: ml_collections.ConfigDict) -> str:
  """"averaged" or "raw": which weights `config`'s runs validate, select, evaluate and export
  (the name every report gives them)."""
  return "averaged" if averaging_enabled(config) else "raw"


class Run(NamedTuple):
  """An opened training run.

  Attributes:
    workdir: its directory.
    config: the config it was opened with.
    model: the Flax module `config.model` builds (compute dtype bf16 with
      `half_precision`).
    variables: `{'params', 'batch_stats'}` of the checkpoint `which`, replicated over the
      current devices; the weight average where `config` has one.
    step: the checkpoint's step.
    checkpoint: "best" or "last", as asked.
    weights: "averaged" or "raw".
  """
  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  variables: dict
  step: int
  checkpoint: str
  weights: str

  @property
  def kind(self) -> str:
    return kind(self.config.model)

  def name(self, style: str = "paper") -> str:
    return display_name(self.config.model, style)


def open_run(workdir: str, config: Optional[ml_collections.ConfigDict] = None,
             which: Optional[str] = None) -> Run:
  """Opens the run in `workdir`.

  Args:
    workdir: a training run's directory.
    config: the config to build the model with; default the run's own `config.json`.
    which: "best" or "last"; default `config.evaluation.checkpoint`.
  Raises:
    FileNotFoundError: no `config.json` where `config` is not given.
    ConfigError: a bad `config.model` (before anything is read).
    CheckpointError: no readable checkpoint, one of another model (the message names the
      variables that differ), or averaged weights asked of a run that has none.
  """
  if config is None:
    from siriib_jax.configs import default  # pylint: disable=import-outside-toplevel
    config = run_config.load(workdir, default.get_config())
  which = which or config.evaluation.checkpoint
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  model = create_model(config.model, config.dataset.image_size, dtype)
  size = config.dataset.image_size
  expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  variables, step = load_variables(workdir, which, expected=expected,
                                   averaged=averaging_enabled(config))
  return Run(workdir, config, model, variables, int(step), which, weights_name(config))
