"""One row of the privacy table: what an attacker gets back from the protected QUERY images.

For a recovery function (identity for the protected images themselves, a trained generator, the
white-box inversion), the test split's query images (its first ``num_query``, in numeric batch
order) are recovered batch by batch and scored against their originals (PSNR/SSIM under both
protocols, LPIPS when enabled) and, through every evaluator model, searched against the ORIGINAL
gallery (identity leakage, Rank-1 and mAP), with the chance level of a random ranking beside them.
"""
import os

import numpy as np
import torch

from evaluation.features import extract_features
from evaluation.image_quality import ImageQuality, image_groups, to_pixels
from evaluation.leakage import chance_level, identity_leakage
from evaluation.lpips_metric import NOT_COMPUTED_NOTE, build_lpips, lpips_distance
from utils.grids import grid_image, save_labelled_grid

FEATURE_CHUNK = 64
# The smallest image (height, width) on which lpips' AlexNet keeps a feature map at every layer.
LPIPS_MIN_SIZE = (64, 32)


def lpips_for(settings_path, image_shape, device):
    """(metric or None, {'computed', 'note'}): LPIPS only with a trunk file and large enough images."""
    if not settings_path:
        return None, {"computed": False, "note": NOT_COMPUTED_NOTE}
    height, width = image_shape[1:]
    if height < LPIPS_MIN_SIZE[0] or width < LPIPS_MIN_SIZE[1]:
        return None, {"computed": False, "note": f"LPIPS not computed: {height} x {width} images are smaller than "
                                                 f"AlexNet needs ({LPIPS_MIN_SIZE[0]} x {LPIPS_MIN_SIZE[1]})"}
    return build_lpips(settings_path, device), {"computed": True,
                                                "note": f"LPIPS AlexNet v0.1, trunk {settings_path}"}


def routed_forward(model, images, modalities=None):
    """``model(images)`` with each image through its own sensor's stem when the model has one per modality
    (an agw_vi network's ``for_modality``) and ``modalities`` names the sensors; else ``model(images)``.
    Differentiable: the identity attacker's loss and the white-box inversion take gradients through it."""
    if modalities is None or not hasattr(model, "for_modality"):
        return model(images)
    features = None
    for modality, rows in image_groups(modalities).items():
        rows = rows.to(images.device)
        part = model.for_modality(modality)(images[rows])
        if features is None:
            features = part.new_zeros((images.shape[0], *part.shape[1:]))
        features = features.index_copy(0, rows, part)
    return features


def modality_features(model, images, modalities=None):
    """Eval-mode fp32 features of ``images`` for scoring, each through its own sensor's stem (``routed_forward``)."""
    if modalities is None or not hasattr(model, "for_modality"):
        return extract_features(model, images, FEATURE_CHUNK)
    with torch.no_grad():
        return torch.cat([routed_forward(model, images[start:start + FEATURE_CHUNK],
                                         modalities[start:start + FEATURE_CHUNK]).float()
                          for start in range(0, images.shape[0], FEATURE_CHUNK)])


class PrivacyScorer:
    """Everything fixed across rows: the query/gallery split, evaluators, gallery features, chance, LPIPS."""

    def __init__(self, test_pairs, num_query, evaluators, settings, device, lpips_path="", reid_kwargs=None):
        self.pairs = test_pairs
        self.num_query = num_query
        self.evaluators = evaluators
        self.settings = settings
        self.device = torch.device(device)
        self.reid_kwargs = reid_kwargs or {}
        pids, camids = zip(*(test_pairs.load_labels(p) for p in range(test_pairs.num_batches)))
        pids, camids = np.concatenate(pids), np.concatenate(camids)
        self.q_pids, self.g_pids = pids[:num_query], pids[num_query:]
        self.q_camids, self.g_camids = camids[:num_query], camids[num_query:]
        self.chance = chance_level(self.q_pids, self.g_pids, self.q_camids, self.g_camids)
        self.lpips, self.lpips_status = lpips_for(lpips_path, test_pairs.image_shape, self.device)
        gallery = {label: [] for label in evaluators}
        query = {label: [] for label in evaluators}
        for protected, original, first, modalities in self.batches(queries=False):
            split = max(0, num_query - first)
            self._add_features(gallery, original[split:], None if modalities is None else modalities[split:])
            self._add_features(query, original[:split], None if modalities is None else modalities[:split])
        self.gallery_features = {label: torch.cat(parts) for label, parts in gallery.items()}
        clean = {label: torch.cat(parts) for label, parts in query.items()}
        self.clean = {label: self._leakage(features, label) for label, features in clean.items()}

    def batches(self, queries=True):
        """(protected, original, index of the first image, sensor names or None) per saved test batch, on the
        device; with ``queries`` only the query rows, stopping after the last query."""
        first = 0
        for position in range(self.pairs.num_batches):
            if queries and first >= self.num_query:
                return
            protected, original = (tensor.to(self.device) for tensor in self.pairs.load_batch(position))
            modalities = self.pairs.load_modalities(position)
            if queries:
                rows = slice(0, self.num_query - first)
                protected, original = protected[rows], original[rows]
                modalities = None if modalities is None else modalities[rows]
            yield protected, original, first, modalities
            first += self.pairs.batch_sizes[position]

    def _add_features(self, store, images, modalities=None):
        if images.shape[0]:
            for label, model in self.evaluators.items():
                store[label].append(modality_features(model, images, modalities).cpu())

    def _leakage(self, query_features, label):
        return identity_leakage(query_features, self.gallery_features[label], self.q_pids, self.g_pids,
                                self.q_camids, self.g_camids, **self.reid_kwargs)

    def header(self):
        return {"num_query": self.num_query, "num_gallery": len(self.g_pids),
                "evaluators": list(self.evaluators), "chance": self.chance, "clean": self.clean,
                "lpips": self.lpips_status}

    def score(self, recover, grid_dir=None, num_grids=0):
        """A row for ``recover(protected, modalities) -> recovered`` (normalised images; ``modalities``: the
        batch's sensor names or None), over the query images."""
        quality = ImageQuality(("recovered",), self.settings.pixel_mean, self.settings.pixel_std)
        quality.reset()
        features = {label: [] for label in self.evaluators}
        lpips_values = []
        for number, (protected, original, _, modalities) in enumerate(self.batches()):
            recovered = recover(protected, modalities)
            quality.update(({"recovered": recovered}, original))
            self._add_features(features, recovered, modalities)
            if self.lpips is not None:
                lpips_values.append(lpips_distance(
                    self.lpips, to_pixels(recovered, self.settings.pixel_mean, self.settings.pixel_std),
                    to_pixels(original, self.settings.pixel_mean, self.settings.pixel_std)).cpu())
            if grid_dir is not None and number < num_grids:
                save_labelled_grid(grid_image(protected, recovered, original), os.path.join(grid_dir, f"{number}.png"))
        record = quality.compute()
        return {
            "num_images": record["num_images"],
            "psnr_pixel": record["pixel_space"]["recovered"]["psnr"],
            "ssim_pixel": record["pixel_space"]["recovered"]["ssim"],
            "psnr_reference": record["reference_normalisation"]["recovered"]["psnr"],
            "ssim_reference": record["reference_normalisation"]["recovered"]["ssim"],
            "lpips": float(torch.cat(lpips_values).mean()) if lpips_values else None,
            "leakage": {label: self._leakage(torch.cat(parts), label) for label, parts in features.items()},
        }
