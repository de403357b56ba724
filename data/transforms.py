"""Image transforms of the AGW recipe and (de)normalisation of batched tensors.

The evaluation transform does the reference's arithmetic exactly (PIL bilinear resize, ``ToTensor``'s
division by 255, ``Normalize``'s subtract-then-divide in float32): PixelFade's loop amplifies any
rounding, so a protected image is reproduced bit for bit only from bit-identical inputs.
"""
import math

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


# OpenAI CLIP's pixel statistics, which IRRA and other CLIP-based text-to-image Re-ID models normalise with.
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
# IRRA's test input: 384 x 128 (height x width), a 24 x 8 grid of 16-pixel patches.
IRRA_IMG_SIZE = (384, 128)


def build_clip_eval_transform(size=IRRA_IMG_SIZE):
    """IRRA's test transform: Resize((H, W)) bilinear, ToTensor, Normalize with CLIP's mean/std.

    ``size`` (height, width) is 384 x 128 for IRRA; (224, 224) for CLIP models trained at that size
    (TBPS-CLIP). torchvision's Resize on a PIL image is PIL's bilinear resize, as here.
    """
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ConfigError(f"CLIP input size must be (height, width) > 0, got {tuple(size)}")
    return EvalTransform((height, width), CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)


# The AGW cross-modality input (mangye16/Cross-Modal-Re-ID-baseline): 288 x 144, ImageNet statistics.
AGW_VI_IMG_SIZE = (288, 144)
IMAGENET_PIXEL_MEAN = (0.485, 0.456, 0.406)
IMAGENET_PIXEL_STD = (0.229, 0.224, 0.225)


class VisibleInfraredEvalTransform:
    """PIL image -> normalised (3, H, W): RGB, Lanczos resize, then the reference's bilinear Resize, normalise.

    The reference resizes with ANTIALIAS (= LANCZOS) when it loads the test images, then its
    transform resizes again to the same size (PIL returns a copy then) before ToTensor and Normalize.
    """

    def __init__(self, size, mean, std):
        self.height, self.width = size
        self.normalize = NormalizeImage(mean, std)

    def __call__(self, image):
        image = image.convert("RGB").resize((self.width, self.height), Image.LANCZOS)
        image = image.resize((self.width, self.height), Image.BILINEAR)
        return self.normalize(to_unit_tensor(image))


def build_vi_eval_transform(size=AGW_VI_IMG_SIZE, mean=IMAGENET_PIXEL_MEAN, std=IMAGENET_PIXEL_STD):
    """The AGW cross-modality test transform (MODEL.FORMAT agw_vi); ``size`` is (height, width)."""
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ConfigError(f"visible-infrared input size must be (height, width) > 0, got {tuple(size)}")
    return VisibleInfraredEvalTransform((height, width), mean, std)


class RandomErasing:
    """AGW's RandomErasing on a normalised (3, H, W) tensor (Zhong et al., as ReID-Survey implements it).

    With probability ``probability`` it tries up to 100 times: area ~ U(sl, sh) of the image,
    aspect ~ U(r1, 1/r1), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); the first
    box with h < H and w < W, at a uniform top-left corner, is filled channel by channel with
    ``fill`` - the reference's RAW numbers (0.485, 0.456, 0.406), written into the already
    normalised tensor. Random numbers come from torch's global generator.
    """

    def __init__(self, probability=0.5, sl=0.02, sh=0.4, r1=0.3, fill=(0.485, 0.456, 0.406), attempts=100):
        self.probability = float(probability)
        self.sl, self.sh, self.r1 = float(sl), float(sh), float(r1)
        self.fill = [float(v) for v in fill]
        self.attempts = int(attempts)

    @staticmethod
    def _uniform(low, high):
        return low + (high - low) * float(torch.rand(()))

    def __call__(self, image):
        if float(torch.rand(())) >= self.probability:
            return image
        height, width = image.shape[-2:]
        for _ in range(self.attempts):
            area = height * width * self._uniform(self.sl, self.sh)
            aspect = self._uniform(self.r1, 1.0 / self.r1)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, ()))
                left = int(torch.randint(0, width - w + 1, ()))
                image = image.clone()
                for channel in range(image.shape[0]):
                    image[channel, top:top + h, left:left + w] = self.fill[channel % len(self.fill)]
                return image
        return image


# The reference fills erased boxes with these raw numbers after normalisation (ReID-Survey's data/transforms).
RANDOM_ERASING_FILL = (0.485, 0.456, 0.406)


def build_train_transform(cfg):
    """The AGW train transform, in the reference's order.

    PIL bilinear Resize(INPUT.IMG_SIZE) -> RandomHorizontalFlip(INPUT.PROB) -> Pad(INPUT.PADDING,
    zero fill) -> RandomCrop(IMG_SIZE) -> ToTensor (division by 255) -> Normalize ->
    RandomErasing(INPUT.RE_PROB, area 2-40 %, aspect 0.3-3.33, filled with the raw 0.485/0.456/0.406
    after normalisation). All random draws use torch's global generator.
    """
    size = _size(cfg)
    padding = int(cfg.INPUT.PADDING)
    steps = [
        v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(p=float(cfg.INPUT.PROB)),
    ]
    if padding > 0:
        steps.append(v2.Pad(padding, fill=0, padding_mode="constant"))
    steps.append(v2.RandomCrop(size))
    steps += [to_unit_tensor, NormalizeImage(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)]
    steps.append(RandomErasing(probability=float(cfg.INPUT.RE_PROB), fill=RANDOM_ERASING_FILL))
    return v2.Compose(steps)


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
