"""Image transforms of the AGW recipe and (de)normalisation of batched tensors.

The evaluation transform does the reference's arithmetic exactly (PIL bilinear resize, ``ToTensor``'s
division by 255, ``Normalize``'s subtract-then-divide in float32): PixelFade's loop amplifies any
rounding, so a protected image is reproduced bit for bit only from bit-identical inputs.
"""
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from utils.errors import ConfigError


def _size(cfg):
    height, width = (int(v) for v in cfg.INPUT.IMG_SIZE)
    if height < 1 or width < 1:
        raise ConfigError(f"INPUT.IMG_SIZE must be [height, width] > 0, got {cfg.INPUT.IMG_SIZE}")
    return height, width


def to_unit_tensor(image):
    """PIL RGB image -> float32 (3, H, W) in [0, 1], dividing by 255 as ``ToTensor`` does.

    ``v2.ToDtype(scale=True)`` multiplies by 1/255 instead, which differs in the last bit.
    """
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class NormalizeImage:
    """Pixels in [0, 1] (3, H, W) -> ``(x - mean) / std`` in float32, as ``Normalize`` computes it."""

    def __init__(self, mean, std):
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def __call__(self, pixels):
        return normalize(pixels, self.mean, self.std)


class EvalTransform:
    """PIL image -> normalised float tensor (3, H, W): bilinear resize to INPUT.IMG_SIZE, normalise."""

    def __init__(self, size, mean, std):
        self.height, self.width = size
        self.normalize = NormalizeImage(mean, std)

    def __call__(self, image):
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BILINEAR)
        return self.normalize(to_unit_tensor(image))


def _to_normalized_tensor(cfg):
    return [to_unit_tensor, NormalizeImage(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)]


def build_eval_transform(cfg):
    """The reference's evaluation transform: bilinear resize to INPUT.IMG_SIZE, ToTensor, Normalize."""
    return EvalTransform(_size(cfg), cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)


def build_train_transform(cfg):
    """AGW training augmentation: flip, pad + random crop, normalise, random erasing.

    Erased boxes are filled with 0 in normalised space, i.e. the mean colour, the intent of
    AGW's own RandomErasing (area 2-40 %, aspect 0.3-3.3).
    """
    size = _size(cfg)
    return v2.Compose(
        [
            v2.Resize(size, antialias=True),
            v2.RandomHorizontalFlip(p=float(cfg.INPUT.PROB)),
            v2.Pad(int(cfg.INPUT.PADDING)),
            v2.RandomCrop(size),
        ]
        + _to_normalized_tensor(cfg)
        + [
            v2.RandomErasing(p=float(cfg.INPUT.RE_PROB), scale=(0.02, 0.4), ratio=(0.3, 3.3)),
        ]
    )


def _channel_stats(images, mean, std):
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected images shaped (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    dtype = images.dtype if images.is_floating_point() else torch.float32
    mean = torch.as_tensor(mean, dtype=dtype, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=dtype, device=images.device).view(3, 1, 1)
    return mean, std


def normalize(pixels, mean, std):
    """Pixels in [0, 1] -> normalised model input, on the tensor's own device and dtype."""
    mean, std = _channel_stats(pixels, mean, std)
    return (pixels - mean) / std


def denormalize(images, mean, std):
    """Normalised images -> pixel values (in [0, 1] for real images; not clamped)."""
    mean, std = _channel_stats(images, mean, std)
    return images * std + mean
