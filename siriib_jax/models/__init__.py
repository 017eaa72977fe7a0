"""Models looked up by name: `create_model(config.model, image_size)`; the model as a
function of the image for attacks: `logits_fn(model, variables)`."""

from siriib_jax.models.backbones import BACKBONES
from siriib_jax.models.classifier import Classifier, ModelOutput, create_model
from siriib_jax.models.model_fn import ModelFn, logits_fn, outputs_fn
from siriib_jax.models.siriib import SiRIIB, SRBlock, modulate_amplitude

__all__ = ["BACKBONES", "Classifier", "ModelFn", "ModelOutput", "SiRIIB", "SRBlock",
           "create_model", "logits_fn", "modulate_amplitude", "outputs_fn"]
