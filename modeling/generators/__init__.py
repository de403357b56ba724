"""Image-to-image generators of the recovery attack (pix2pix networks), by name.

Importing this package registers every generator in ``GENERATORS`` (a ``utils.registry.Registry``
keyed by ATTACK.GENERATOR); ``build_generator`` builds and initializes one.
"""
from torch import nn

from utils.errors import ConfigError

from .init import init_pix2pix_weights
from .registry import GENERATORS
# Importing the network modules registers their generators.
from .resnet_generator import ResnetGenerator
from .unet import UnetGenerator

__all__ = ["GENERATORS", "OUTPUT_ACTIVATIONS", "build_generator", "init_pix2pix_weights",
           "ResnetGenerator", "UnetGenerator"]

# 'tanh' is the reference (outputs in [-1, 1]); 'none' lets the output reach any target range.
OUTPUT_ACTIVATIONS = {"tanh": nn.Tanh, "none": None}


def build_generator(name, ngf=64, output_activation="tanh", input_nc=3, output_nc=3):
    """A freshly initialized generator (pix2pix normal init, BatchNorm, no dropout).

    Bad options raise ``ConfigError`` naming the config key they come from (ATTACK.GENERATOR,
    ATTACK.NGF) or the argument.
    """
    factory = GENERATORS.get(name)
    if output_activation not in OUTPUT_ACTIVATIONS:
        raise ConfigError(f"unknown output_activation '{output_activation}'; expected one of "
                          f"{sorted(OUTPUT_ACTIVATIONS)}")
    for option, value in (("ATTACK.NGF", ngf), ("input_nc", input_nc), ("output_nc", output_nc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"generator option {option} must be a positive integer, "
                              f"got {value!r}")
    activation_class = OUTPUT_ACTIVATIONS[output_activation]
    generator = factory(input_nc=input_nc, output_nc=output_nc, ngf=ngf,
                        output_activation=activation_class() if activation_class else None)
    return init_pix2pix_weights(generator)
