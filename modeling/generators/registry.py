"""Name -> constructor registry of the attack's generators (cfg.ATTACK.GENERATOR picks one).

Each generator registers one function where its network is defined (``unet.py``,
``resnet_generator.py``), the way timm registers models::

    @GENERATORS.register("unet_128")
    def unet_128(**options):
        return UnetGenerator(7, **options)

The options are ``input_nc``, ``output_nc``, ``ngf`` and ``output_activation`` (a module or None);
``modeling.generators.build_generator`` checks them and initializes the weights.
"""
from utils.registry import Registry

GENERATORS = Registry("generator", config_key="ATTACK.GENERATOR")
