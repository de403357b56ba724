"""evaluation/privacy.py: the original gallery when the query count ends inside a saved batch."""
from types import SimpleNamespace

import torch

from data.img_npy import write_batch
from data.npy_pairs import PairDataset
from evaluation.leakage import identity_leakage
from evaluation.privacy import PrivacyScorer

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def flat(images):
    """A 'model' whose feature is the image itself: each feature names its image."""
    return images.flatten(1)


def test_gallery_features_are_the_originals_after_the_queries(tmp_path):
    generator = torch.Generator().manual_seed(0)
    original = torch.randn(12, 3, 12, 11, generator=generator)
    protected = torch.randn(12, 3, 12, 11, generator=generator)
    pids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    camids = torch.tensor([0] * 6 + [1] * 6)
    for index in range(3):  # batches of 4: the 6 queries end inside the second batch
        rows = slice(4 * index, 4 * index + 4)
        write_batch(str(tmp_path), "test", index, original[rows], protected[rows], pids[rows], camids[rows])
    pairs = PairDataset(str(tmp_path), "test")
    settings = SimpleNamespace(pixel_mean=MEAN, pixel_std=STD)
    scorer = PrivacyScorer(pairs, 6, {"flat": flat}, settings, "cpu")
    assert torch.equal(scorer.gallery_features["flat"], original[6:].flatten(1))
    assert scorer.header()["num_gallery"] == 6
    expected_clean = identity_leakage(original[:6].flatten(1), original[6:].flatten(1), pids[:6].numpy(),
                                      pids[6:].numpy(), camids[:6].numpy(), camids[6:].numpy())
    assert scorer.clean["flat"] == expected_clean
    queries = []
    row = scorer.score(lambda images, modalities: queries.append(images) or images)
    assert row["num_images"] == 6 and torch.equal(torch.cat(queries), protected[:6])
