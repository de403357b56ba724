"""torchreid (KaiyangZhou/deep-person-reid) Re-ID models as authorization models.

Importing this package registers the ``torchreid`` entry of ``modeling.formats.MODEL_FORMATS``:
OSNet (x1_0 / x0_75 / x0_5 / x0_25, ibn_x1_0), OSNet-AIN (x1_0 / x0_75 / x0_5 / x0_25), ResNet-50 and
ResNet-50-fc512, with torchreid's exact key names and eval outputs, built without any download.
"""
from .format import (
    ARCHITECTURES,
    FEATURE_DOC,
    TORCHREID_FORMAT,
    build,
    build_architecture,
    detect,
    fitting_architectures,
    load,
)

__all__ = [
    "ARCHITECTURES",
    "FEATURE_DOC",
    "TORCHREID_FORMAT",
    "build",
    "build_architecture",
    "detect",
    "fitting_architectures",
    "load",
]
