"""How EPSILON relates to a model's features: the scale, the equivalent relative bound, a short trial.

EPSILON bounds a mean squared feature error, so its meaning depends on the model's feature scale
(AGW's 2048-d BNNeck features are not OSNet's 512-d ReLU outputs). This measures, on a sample of
images, the mean square of the model's features, the relative EPSILON equal to a given absolute
one, and, after a short protection of the sample, how often the constraint held and where the
final feature error ends against the bound (README, "Choosing EPSILON").
"""

import torch

from data.loaders import read_image
from data.transforms import build_eval_transform
from engine.methods import build_method
from engine.methods.pixelfade import PixelFadeParams, feature_loss


def sample_batch(cfg, paths, device):
    transform = build_eval_transform(cfg)
    return torch.stack([transform(read_image(path)) for path in paths]).to(device)


def feature_scale_report(cfg, model, images):
    """A dict: feature dimension and scale, the relative EPSILON equal to cfg's absolute one, and a trial run."""
    with torch.no_grad():
        features = model(images).float()
    scale = float(features.pow(2).mean())
    params = PixelFadeParams.from_cfg(cfg)
    method = build_method(cfg, model, images.device)
    result = method(images, torch.arange(images.shape[0]))
    with torch.no_grad():
        final = feature_loss(model(result.protected).float(), features, per_sample=True)
    relative = cfg.PIXELFADE.EPSILON_MODE == "relative"
    bound = params.epsilon * (features.pow(2).mean(dim=1) if relative else torch.ones(len(final)))
    return {
        "images": int(images.shape[0]),
        "feature_dim": int(features.shape[1]),
        "feature_mean_square": scale,
        "epsilon": params.epsilon,
        "epsilon_mode": cfg.PIXELFADE.EPSILON_MODE,
        "relative_epsilon_equal_to_absolute": params.epsilon / scale if not relative else params.epsilon,
        "absolute_epsilon_equal_to_relative": params.epsilon * scale if relative else params.epsilon,
        "trial_steps": params.max_iter,
        "share_of_steps_constraint_held": float(result.constraint_held.mean()),
        "final_feature_mse_mean": float(final.mean()),
        "final_error_over_bound_mean": float((final / bound).mean()),
        "share_of_images_above_bound": float((final > bound).float().mean()),
    }


def format_report(report):
    lines = [
        f"{report['images']} images, {report['feature_dim']}-d features, mean square of a feature element "
        f"{report['feature_mean_square']:.4g}",
        f"EPSILON {report['epsilon']:g} ({report['epsilon_mode']}) = absolute "
        f"{report['absolute_epsilon_equal_to_relative']:.4g}"
        f" = relative {report['relative_epsilon_equal_to_absolute']:.4g}",
        f"trial, {report['trial_steps']} steps: the constraint held in "
        f"{report['share_of_steps_constraint_held']:.1%} of the steps; final feature MSE "
        f"{report['final_feature_mse_mean']:.4g} = {report['final_error_over_bound_mean']:.2f}x "
        f"the bound; {report['share_of_images_above_bound']:.1%} of the images end above it",
    ]
    return "\n".join(lines)
