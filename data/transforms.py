"""Image transforms of the AGW recipe and (de)normalisation of batched tensors."""
import torch
from torchvision.transforms import v2


def _size(cfg):
    height, width = (int(v) for v in cfg.INPUT.IMG_SIZE)
    if height < 1 or width < 1:
        raise ValueError(f"INPUT.IMG_SIZE must be [height, width] > 0, got {cfg.INPUT.IMG_SIZE}")
    return height, width


def _to_normalised_tensor(cfg):
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD)),
    ]


def build_eval_transform(cfg):
    """PIL image -> float tensor (3, H, W): bilinear resize to INPUT.IMG_SIZE, then normalise."""
    return v2.Compose(
        [v2.Resize(_size(cfg), antialias=True)] + _to_normalised_tensor(cfg) + [v2.ToPureTensor()]
    )


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
        + _to_normalised_tensor(cfg)
        + [
            v2.RandomErasing(p=float(cfg.INPUT.RE_PROB), scale=(0.02, 0.4), ratio=(0.3, 3.3)),
            v2.ToPureTensor(),
        ]
    )


def _channel_stats(images, mean, std):
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected images shaped (B, 3, H, W), got {tuple(images.shape)}")
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
