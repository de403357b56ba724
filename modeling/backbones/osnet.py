"""PixelFade's ``osnet`` backbone: torchreid OSNet x1_0 cut at ``conv5`` (no ``fc``, no classifier).

Keys under ``base.`` (as in the paper's code): ``conv1.conv.weight``, ``conv1.bn.*``,
``conv2.{0,1}.{conv1,conv2a,conv2b.{0,1},conv2c.{0..2},conv2d.{0..3},gate,conv3,downsample}.*``,
``conv2.2.0.*``, ``conv3.*``, ``conv4.{0,1}.*`` and ``conv5.*``. The output is the 512-channel conv5
map (16x8 for a 256x128 input), which the Baseline pools with GeM and normalises with BN(512).
OSNet has no last stride to choose: ``MODEL.LAST_STRIDE`` is accepted and has no effect, as in the
reference. Initialisation follows torchreid; nothing is downloaded (the reference's ImageNet
download at construction is left out).
"""
from ..torchreid.osnet import OSNET_CHANNELS, OSNetTrunk, init_torchreid_params
from .registry import register_backbone


@register_backbone("osnet_x1_0")
def osnet_x1_0(last_stride):
    del last_stride  # OSNet's stages have fixed strides
    trunk = OSNetTrunk(OSNET_CHANNELS["x1_0"])
    init_torchreid_params(trunk)
    return trunk
