"""Models looked up by name: `create_model(config.model, image_size)`."""

from siriib_jax.models.classifier import (BACKBONES, Classifier, ModelOutput, create_model,
                                          validate_model_config)
from siriib_jax.models.siriib import SiRIIB, SRBlock, modulate_amplitude

__all__ = ["BACKBONES", "Classifier", "ModelOutput", "SiRIIB", "SRBlock", "create_model",
           "modulate_amplitude", "validate_model_config"]
