"""Name -> constructor registry of backbones (cfg.MODEL.NAME picks one)."""
from utils.registry import Registry

BACKBONES = Registry("backbone")


def register_backbone(name):
    """Decorator: register ``factory(last_stride) -> nn.Module`` under ``name``."""
    return BACKBONES.register(name)


def build_backbone(name, last_stride):
    """A freshly initialised backbone; unknown names raise ConfigError listing the known ones."""
    return BACKBONES.get(name)(last_stride)
