"""Name -> constructor registry of backbones (cfg.MODEL.NAME picks one)."""

BACKBONES = {}


def register_backbone(name):
    """Decorator: register ``factory(last_stride) -> nn.Module`` under ``name``."""

    def decorator(factory):
        if name in BACKBONES:
            raise ValueError(f"backbone '{name}' is already registered")
        BACKBONES[name] = factory
        return factory

    return decorator


def build_backbone(name, last_stride):
    """A freshly initialised backbone; unknown names raise ValueError listing the known ones."""
    if name not in BACKBONES:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone '{name}'; available: {known}")
    return BACKBONES[name](last_stride)
