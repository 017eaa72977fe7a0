"""siriib_jax: SiRIIB (Singular Regularization with Information Bottleneck) in JAX/Flax."""

__version__ = "0.1.0"
