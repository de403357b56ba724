"""Name -> object registries: how a config value (``MODEL.NAME``, ``DATASETS.NAMES``, ...) picks code.

Each kind of pluggable piece (data sets, backbones, generators, protection methods) has one
``Registry``. A piece registers itself where it is defined, one function or class per name, the
way timm registers each model::

    BACKBONES = Registry("backbone", config_key="MODEL.NAME")

    @BACKBONES.register("resnet50")
    def resnet50(last_stride):
        return ResNet([3, 4, 6, 3], last_stride)

    factory = BACKBONES.get(cfg.MODEL.NAME)   # ConfigError naming the valid names if unknown
    "resnet50" in BACKBONES                   # True
    BACKBONES.names()                         # ('resnet101', 'resnet152', 'resnet50', ...)

Registration happens at import time, so the package that defines the pieces must import every
module holding one (see ``data/datasets/__init__.py``).
"""
from utils.errors import ConfigError


class Registry:
    """Named functions or classes of one ``kind`` (e.g. ``"dataset"``), registered by decorator.

    ``config_key``, when given, is the config key the name comes from; unknown-name errors cite it
    so a user knows what to fix. ``register`` refuses a name twice (``ValueError``: a programming
    error, not bad input); ``get`` raises ``ConfigError`` for an unknown name. ``in``, ``len`` and
    iteration work on the names; iteration and ``names()`` are in sorted order.
    """

    def __init__(self, kind, config_key=None):
        self.kind = kind
        self.config_key = config_key
        self._entries = {}

    def register(self, name):
        """Decorator registering a function or class under ``name``; returns it unchanged.

        Also usable as a call, ``registry.register("name")(obj)``, for objects built in a loop.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def decorator(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name):
        """The object registered as ``name``; ``ConfigError`` naming the valid names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f" ({self.config_key})" if self.config_key else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{where}; known: {', '.join(self.names()) or 'none'}"
            ) from None

    def names(self):
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name):
        try:
            return name in self._entries
        except TypeError:  # an unhashable value is no name
            return False

    def __iter__(self):
        return iter(self.names())

    def __len__(self):
        return len(self._entries)

    def __repr__(self):
        return f"Registry({self.kind!r}, names={list(self.names())})"
