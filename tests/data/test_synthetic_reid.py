"""The synthetic pedestrians carry identity: an untrained AGW already retrieves them well above chance."""
import numpy as np
import pytest
import torch

from configs import load_config
from data.datasets import build_dataset
from data.loaders import build_loader, eval_records
from data.synthetic import make_market1501
from data.transforms import build_eval_transform
from evaluation.reid import evaluate_reid
from modeling import build_authorization_model


def chance_rank1(query, gallery):
    """Expected Rank-1 of a random ranking under the Market protocol (same pid and camera dropped)."""
    rates = []
    for q in query:
        valid = [g for g in gallery if not (g.pid == q.pid and g.camid == q.camid)]
        matches = sum(g.pid == q.pid for g in valid)
        if matches:
            rates.append(matches / len(valid))
    return float(np.mean(rates))


def test_untrained_agw_rank1_is_well_above_chance(tmp_path):
    make_market1501(str(tmp_path), num_ids=20, num_cams=3, images_per_id_cam=2, height=64, width=32, seed=1)
    dataset = build_dataset("market1501", str(tmp_path))
    cfg = load_config("", ["INPUT.IMG_SIZE", "[64, 32]"])
    model = build_authorization_model(cfg, "", "cpu")
    records, num_query = eval_records(dataset)
    with torch.no_grad():
        features = torch.cat([model(batch["image"]) for batch in build_loader(records, build_eval_transform(cfg), 32)])
    pids = torch.tensor([r.pid for r in records])
    camids = torch.tensor([r.camid for r in records])
    scores = evaluate_reid(features[:num_query], features[num_query:], pids[:num_query], pids[num_query:],
                           camids[:num_query], camids[num_query:])
    chance = chance_rank1(dataset.query, dataset.gallery)
    # 10 test identities x 3 cameras: 30 queries; gallery 30 + 10 distractors (junk skipped).
    # Each query keeps 39 gallery images (its own camera's image of its pid is dropped), 2 matches.
    assert (len(dataset.query), len(dataset.gallery)) == (30, 40)
    assert chance == pytest.approx(2 / 39, abs=1e-12)
    assert scores["rank1"] >= 3 * chance, (scores["rank1"], chance)
