"""ResNet-50 with non-local blocks (AGW's ``resnet50_nl``)."""
from torch import nn

from ..layers.non_local import Non_local
from .registry import register_backbone
from .resnet import RESNET_DEPTHS, ResNet

STAGE_CHANNELS = (256, 512, 1024, 2048)


class ResNetNL(ResNet):
    """ResNet whose stage k is followed, after each of its last ``non_local_counts[k]`` blocks,
    by a non-local block held in ``NL_{k+1}`` (the released AGW uses (0, 2, 3, 0))."""

    def __init__(self, layers, last_stride=1, non_local_counts=(0, 2, 3, 0), inter_channels=1):
        super().__init__(layers, last_stride)
        self.non_local_after = []
        for stage_index, (blocks, count) in enumerate(zip(layers, non_local_counts)):
            if count > blocks:
                raise ValueError(
                    f"stage {stage_index + 1} has {blocks} blocks, cannot hold {count} non-local blocks"
                )
            channels = STAGE_CHANNELS[stage_index]
            blocks_nl = nn.ModuleList(Non_local(channels, inter_channels) for _ in range(count))
            setattr(self, f"NL_{stage_index + 1}", blocks_nl)
            first = blocks - count
            self.non_local_after.append({first + j: j for j in range(count)})

    def forward(self, x):
        x = self.stem(x)
        for stage_index, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            non_local = getattr(self, f"NL_{stage_index + 1}")
            after = self.non_local_after[stage_index]
            for block_index, block in enumerate(stage):
                x = block(x)
                if block_index in after:
                    x = non_local[after[block_index]](x)
        return x


@register_backbone("resnet50_nl")
def resnet50_nl(last_stride):
    return ResNetNL(RESNET_DEPTHS["resnet50"], last_stride)
