"""Per-image protection statistics: how well the feature was kept and how much of the image is noise."""
import torch
import torch.nn.functional as F

STAT_NAMES = ("feature_mse", "cosine", "noise_share", "closer_to_noise")


def protection_statistics(original, protected, noise, original_features, protected_features):
    """Per-image feature MSE, feature cosine, and two measures of how noise-like the image is.

    ``noise_share``: values exactly equal to the noise (PixelFade's last steps move every value, so
    this is 0 at the end unless the run stops right after a replacement). ``closer_to_noise``:
    values nearer the noise than the original. Methods without a noise image (blur, mosaic) pass
    ``noise=None`` and get 0 for both. Features are compared raw (before L2 normalisation), as the
    optimisation's constraint is.
    """
    original_features = original_features.float()
    protected_features = protected_features.float()
    feature_mse = ((protected_features - original_features) ** 2).mean(dim=1)
    cosine = F.cosine_similarity(protected_features, original_features, dim=1)
    if noise is None:
        noise_share = closer_to_noise = torch.zeros_like(feature_mse)
    else:
        noise_share = (protected == noise).flatten(1).float().mean(dim=1).to(feature_mse.device)
        nearer = (protected - noise).abs() < (protected - original).abs()
        closer_to_noise = nearer.flatten(1).float().mean(dim=1).to(feature_mse.device)
    return {"feature_mse": feature_mse, "cosine": cosine, "noise_share": noise_share,
            "closer_to_noise": closer_to_noise}
