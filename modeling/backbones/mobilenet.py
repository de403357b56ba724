"""MobileNetV2 trunk as PixelFade uses it: torchvision's ``mobilenet_v2`` with an identity classifier.

State-dict keys are torchvision's ``features.{0..18}.*`` (under ``base.`` in the Baseline) and
nothing else: the classifier is replaced by ``nn.Identity``. The forward ends with torchvision's
own global average pooling, so the trunk returns an already pooled (B, 1280) tensor; the Baseline
then skips its GeM (whose ``p`` stays in the state dict, as in the paper's checkpoints).

The model is built randomly and never downloads weights (the paper's code asked torchvision for
ImageNet weights at construction). ``last_stride`` is accepted for the common factory signature
but has no effect: MobileNetV2 has no stride-configurable last stage in the paper's code either.
"""
from torch import nn

from .registry import register_backbone


@register_backbone("mobilenet_v2")
@register_backbone("mobilenet")
def mobilenet_v2(last_stride):
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    from torchvision.models import MobileNetV2  # the class only: no weight enum, no download

    model = MobileNetV2()
    model.classifier = nn.Identity()
    model.out_channels = model.last_channel  # 1280 at width 1.0
    return model
