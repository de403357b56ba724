"""Per-image protection statistics: how well the feature was kept and how much of the image is noise."""
import torch
import torch.nn.functional as F


def protection_statistics(original_features, protected_features, protected, noise=None):
    """Per-image feature MSE, feature cosine similarity and share of values equal to the noise.

    ``noise`` is the Gaussian image PixelFade fades towards; methods without one (blur, mosaic)
    pass ``None`` and get a share of 0. Features are compared raw (before L2 normalisation), as the
    constraint of the optimisation is.
    """
    original_features = original_features.float()
    protected_features = protected_features.float()
    feature_mse = ((protected_features - original_features) ** 2).mean(dim=1)
    cosine = F.cosine_similarity(protected_features, original_features, dim=1)
    if noise is None:
        noise_share = torch.zeros_like(feature_mse)
    else:
        noise_share = (protected == noise).flatten(1).float().mean(dim=1).to(feature_mse.device)
    return {"feature_mse": feature_mse, "cosine": cosine, "noise_share": noise_share}
