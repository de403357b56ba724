"""The privacy evaluation: chance level, identity leakage, inversion, LPIPS, held-out split, the table end to end."""
import itertools
import json
import os

import numpy as np
import piq
import pytest
import torch
from helpers import protect_argv

import protect_image
import recovery_attack
from data.npy_pairs import PairDataset, identity_rows, split_by_identity
from data.synthetic import make_market1501
from engine.attack.inversion import invert_features, relative_feature_error, total_variation
from engine.attack.results import privacy_table, read_results
from evaluation.leakage import chance_level, expected_random_ap, identity_leakage
from evaluation.lpips_metric import build_lpips, lpips_distance
from evaluation.reid import evaluate_rank

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_expected_random_ap_equals_the_mean_over_every_ranking():
    for matches, ranked in ((1, 4), (2, 5), (3, 6), (6, 6)):
        values = []
        for order in itertools.permutations(range(ranked)):
            hits = np.array([position < matches for position in order])
            ranks = np.flatnonzero(hits) + 1
            values.append(np.mean(np.arange(1, matches + 1) / ranks))
        assert expected_random_ap(matches, ranked) == pytest.approx(np.mean(values), abs=1e-12)


def test_chance_level_is_the_mean_of_evaluate_rank_over_every_ranking():
    # 2 queries; gallery of 5 with one same-camera (junk) entry for query 0.
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    g_pids, g_camids = np.array([1, 1, 2, 3, 1]), np.array([1, 0, 1, 1, 1])
    rank1, average_precision = [], []
    for order in itertools.permutations(range(5)):
        distances = np.tile(np.array(order, dtype=np.float64), (2, 1))
        scores = evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids)
        rank1.append(scores["cmc"][0])
        average_precision.append(scores["mAP"])
    chance = chance_level(q_pids, g_pids, q_camids, g_camids)
    assert chance["rank1"] == pytest.approx(np.mean(rank1), abs=1e-12)
    assert chance["mAP"] == pytest.approx(np.mean(average_precision), abs=1e-12)


def test_noise_features_leak_about_chance_and_originals_leak_everything():
    generator = torch.Generator().manual_seed(0)
    ids = torch.arange(40).repeat_interleave(6)
    cams = torch.arange(6).repeat(40)
    query, gallery = ids % 2 == 0, ids % 2 == 1
    q_pids, g_pids = ids[cams < 2], ids[cams >= 2]
    q_camids, g_camids = cams[cams < 2], cams[cams >= 2]
    del query, gallery
    chance = chance_level(q_pids, g_pids, q_camids, g_camids)
    noise = identity_leakage(torch.randn(len(q_pids), 32, generator=generator),
                             torch.randn(len(g_pids), 32, generator=generator), q_pids, g_pids, q_camids, g_camids)
    assert abs(noise["rank1"] - chance["rank1"]) < 0.05
    assert abs(noise["mAP"] - chance["mAP"]) < 0.05
    centres = torch.randn(40, 32, generator=generator)
    perfect = identity_leakage(centres[q_pids], centres[g_pids], q_pids, g_pids, q_camids, g_camids)
    assert perfect == {"rank1": 1.0, "mAP": 1.0}


def test_total_variation_is_the_mean_squared_right_and_down_difference():
    pixels = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 0.0], [1.0, 0.0, 0.0]]]])
    # Pixels with a right and a down neighbour: (0,0), (0,1), (1,0), (1,1).
    expected = ((1 ** 2 + 2 ** 2) + (2 ** 2 + 1 ** 2) + (0 ** 2 + 1 ** 2) + (2 ** 2 + 2 ** 2)) / 4
    assert total_variation(pixels).tolist() == [pytest.approx(expected)]


def test_inversion_lowers_the_feature_error_on_a_tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d((4, 2)), torch.nn.Flatten()).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    secret = torch.rand(2, 3, 32, 16)
    target = model((secret - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    start = torch.full((2, 3, 32, 16), 0.5)
    pixels, stats = invert_features(model, target, start, MEAN, STD, steps=40, lr=0.05, tv_weight=0.0)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert stats["forward"] == 42 and stats["backward"] == 40
    normalised = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    end = relative_feature_error(model(normalised), target)
    assert torch.allclose(end, stats["feature_error_end"])
    assert (end < 0.2 * stats["feature_error_start"]).all()


def test_identity_split_holds_out_whole_identities_and_no_image_is_in_both_parts(tmp_path):
    from test_attack import write_pairs

    write_pairs(str(tmp_path), train_batches=4, test_batches=1)
    pairs = PairDataset(str(tmp_path / "img_npy"), "train")
    pids = np.concatenate([pairs.load_labels(p)[0] for p in range(pairs.num_batches)])
    held_out = split_by_identity(pids, 0.25, seed=0)
    assert held_out == split_by_identity(pids, 0.25, seed=0)
    assert len(held_out) == max(1, round(0.25 * len(set(pids.tolist()))))
    train, validation = identity_rows(pairs, held_out)
    starts = np.cumsum([0] + pairs.batch_sizes)
    train_images = {int(starts[p]) + r for p, rows in train.items() for r in rows}
    validation_images = {int(starts[p]) + r for p, rows in validation.items() for r in rows}
    assert not train_images & validation_images
    assert train_images | validation_images == set(range(len(pairs)))
    assert {int(pids[i]) for i in validation_images} == set(held_out)
    assert not {int(pids[i]) for i in train_images} & set(held_out)


def test_lpips_is_not_computed_without_the_trunk_file_and_says_how_to_enable_it():
    from evaluation.privacy import lpips_for

    metric, status = lpips_for("", (3, 128, 64), "cpu")
    assert metric is None and status["computed"] is False
    assert "ATTACK.LPIPS_ALEXNET" in status["note"] and "alexnet-owt-7be5be79.pth" in status["note"]


def test_lpips_with_a_local_alexnet_file_equals_lpips_own_computation(tmp_path, monkeypatch):
    import lpips
    import torchvision

    torch.manual_seed(1)
    alexnet = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alexnet.state_dict(), path)
    ours = build_lpips(str(path))
    # lpips' own construction, its torchvision download replaced by the same weights.
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", lambda pretrained=False, **_: alexnet)
    theirs = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    first, second = torch.rand(2, 3, 64, 32), torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        expected = theirs(first * 2 - 1, second * 2 - 1).flatten()
    assert torch.allclose(lpips_distance(ours, first, second), expected, atol=1e-6)
    assert (expected > 0).all()


@pytest.fixture(scope="module")
def protected_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=3)
    output = tmp_path_factory.mktemp("runs") / "blur"
    argv = protect_argv(str(root), output, "--save_image_npy", "--no_progress")
    assert protect_image.main(argv + ["PIXELFADE.METHOD", "blur", "PIXELFADE.NUM_GRIDS", "0"]) == 0
    return output


ATTACK_TINY = ["--total_epochs", "1", "--generator", "resnet_6blocks", "--device", "cpu", "--no_progress",
               "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "1", "DATALOADER.NUM_WORKERS", "0",
               "ATTACK.INVERSION_STEPS", "3", "ATTACK.VAL_FRACTION", "0.25"]


def test_every_attacker_writes_a_row_of_the_privacy_table(protected_run):
    protect_results = json.loads((protected_run / "results.json").read_text())
    cost = protect_results["cost"]
    # Every train and test image timed once; a filter needs no pass of the authorization model.
    records = [torch.load(path, weights_only=True) for path in (protected_run / "records").glob("*.pt")]
    assert cost["images_timed"] == sum(len(record["indices"]) for record in records) > 0
    total_seconds = sum(record["method_seconds"] for record in records)
    assert cost["ms_per_image"] == pytest.approx(1000 * total_seconds / cost["images_timed"])
    assert (cost["forward"], cost["backward"]) == (0, 0)
    assert "Cost of protection" in (protected_run / "results.md").read_text()
    assert recovery_attack.main(["--npy_path", str(protected_run), "--attacker", "all", *ATTACK_TINY]) == 0
    table = privacy_table(str(protected_run))
    assert sorted(table["rows"]) == ["identity", "inversion", "protected", "reference", "strong"]
    assert table["evaluators"] == ["authorization"]
    # The original queries against the original gallery: the protect run's own clean2clean.
    clean = protect_results["reid"]["clean2clean"]
    assert table["clean"]["authorization"] == {"rank1": pytest.approx(clean["rank1"]),
                                              "mAP": pytest.approx(clean["mAP"])}
    # The protected row: the protect run's encry2clean (protected queries vs original gallery).
    protected = protect_results["reid"]["encry2clean"]
    assert table["rows"]["protected"]["leakage"]["authorization"] == {
        "rank1": pytest.approx(protected["rank1"]), "mAP": pytest.approx(protected["mAP"])}
    assert table["num_query"] == protect_results["run"]["num_query"]
    # Its pixel similarity: piq over the stored query images, in pixel space.
    test = PairDataset(str(protected_run / "img_npy"), "test")
    protected_images, originals = (torch.cat(parts)[:table["num_query"]] for parts in zip(
        *(test.load_batch(p) for p in range(test.num_batches))))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    psnr = piq.psnr((protected_images * std + mean).clamp(0, 1), (originals * std + mean).clamp(0, 1),
                    data_range=1.0, reduction="none")
    assert table["rows"]["protected"]["psnr_pixel"] == pytest.approx(float(psnr.mean()), rel=1e-5)
    assert 0 < table["chance"]["mAP"] < 1
    assert table["lpips"]["computed"] is False
    inversion = table["rows"]["inversion"]
    assert inversion["cost"]["forward"] == 3 + 3 and inversion["cost"]["backward"] == 3
    assert table["rows"]["reference"]["selection"] == "best_validation"
    results = read_results(str(protected_run))
    assert results["reference"]["best"]["epoch"] == table["rows"]["reference"]["epoch"] == 0
    assert "validation_l1" in results["identity"]
    markdown = (protected_run / "attack_results.md").read_text()
    assert "| chance |" in markdown
    markdown = markdown[markdown.index("## Privacy"):]
    positions = [markdown.index(f"| {name} |") for name in ("protected", "reference", "strong", "identity",
                                                            "inversion")]
    assert positions == sorted(positions)
    assert os.path.isfile(protected_run / "Generator_weight_identity_best.pth")


@pytest.fixture(scope="module")
def mosaic_run(tmp_path_factory, protected_run):
    root = tmp_path_factory.mktemp("data_mosaic")
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=3)
    output = tmp_path_factory.mktemp("runs") / "mosaic"
    argv = protect_argv(str(root), output, "--save_image_npy", "--no_progress")
    assert protect_image.main(argv + ["PIXELFADE.METHOD", "mosaic", "PIXELFADE.NUM_GRIDS", "0"]) == 0
    assert recovery_attack.main(["--npy_path", str(output), "--attacker", "reference", *ATTACK_TINY]) == 0
    return output


def test_the_comparison_report_holds_each_runs_numbers_and_both_figures(protected_run, mosaic_run, tmp_path, capsys):
    from tools import privacy_report

    if privacy_table(str(protected_run)) is None:
        assert recovery_attack.main(["--npy_path", str(protected_run), "--attacker", "all", *ATTACK_TINY]) == 0
    output = tmp_path / "report"
    assert privacy_report.main(["--runs", str(protected_run), str(mosaic_run), "--output", str(output)]) == 0
    collected = json.loads((output / "privacy_report.json").read_text())
    assert [item["method"] for item in collected] == ["blur", "mosaic"]
    for item, run in zip(collected, (protected_run, mosaic_run)):
        assert item["privacy"] == json.loads(json.dumps(privacy_table(str(run))))
        assert item["authorised_mAP"] == json.loads((run / "results.json").read_text())["reid"]["encry2clean"]["mAP"]
    markdown = (output / "privacy_report.md").read_text()
    strong = collected[0]["privacy"]["rows"]["strong"]
    assert (f"| blur | strong | {strong['psnr_pixel']:.2f} | {strong['ssim_pixel']:.4f} | n/a | "
            f"{100 * strong['leakage']['authorization']['rank1']:.1f} |") in markdown
    assert "| mosaic | reference |" in markdown and "| mosaic | inversion |" not in markdown
    for name in ("privacy_rows.png", "privacy_scatter.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert privacy_report.main(["--runs", str(tmp_path), "--output", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no privacy table" in err[0] and "--attacker all" in err[0]
    assert not (tmp_path / "none").exists()


def test_identity_attacker_adds_the_weighted_relative_feature_error_to_the_l1():
    import copy

    from engine.attack.run import create_attack_trainer
    from engine.attack.settings import AttackSettings, build_optimizer
    from modeling.generators import build_generator

    torch.manual_seed(0)
    settings = AttackSettings(mode="identity", generator="resnet_6blocks", ngf=4, identity_weight=0.7)
    generator = build_generator("resnet_6blocks", ngf=4, output_activation="none")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    protected, originals = torch.randn(2, 3, 32, 16), torch.randn(2, 3, 32, 16)
    model(originals)
    model.eval().requires_grad_(False)
    before = copy.deepcopy(generator)
    trainer = create_attack_trainer(generator, build_optimizer(settings, generator.parameters()), settings, "cpu",
                                    feature_model=model)
    trainer.run([(protected, originals)], max_epochs=1)
    with torch.no_grad():
        before.train()
        outputs = before(protected)
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        l1 = (outputs - (originals * std + mean).clamp(0, 1)).abs().mean()
        target = model(originals)
        error = ((model((outputs - mean) / std) - target) ** 2).sum(1) / (target ** 2).sum(1)
    assert trainer.state.output["loss"].item() == pytest.approx(float(l1 + 0.7 * error.mean()), rel=1e-5)


def test_a_resumed_attack_with_a_validation_split_ends_like_an_uninterrupted_one(tmp_path):
    import dataclasses

    from test_attack import TINY, write_pairs

    from engine.attack.run import run_attack
    from engine.attack.settings import AttackSettings

    npy_dir = write_pairs(str(tmp_path / "data"), train_batches=4, test_batches=1)
    settings = AttackSettings(**{**TINY, "total_epochs": 3, "eval_epochs": (), "val_fraction": 0.25, "mode": "strong"})
    straight = run_attack(settings, npy_dir, str(tmp_path / "straight"), show_progress=False)
    resumed_dir = str(tmp_path / "resumed")
    run_attack(dataclasses.replace(settings, total_epochs=2), npy_dir, resumed_dir, show_progress=False)
    resumed = run_attack(settings, npy_dir, resumed_dir, show_progress=False)
    # The shorter first run also scored its own last epoch (1); everything else is the same.
    for key in ("train_loss", "validation_l1", "best", "settings"):
        assert resumed[key] == straight[key]
    assert resumed["evaluations"]["2"] == straight["evaluations"]["2"]
    assert sorted(straight["validation_l1"]) == ["0", "1", "2"]
    best_epoch = min(straight["validation_l1"], key=lambda epoch: straight["validation_l1"][epoch])
    assert straight["best"]["epoch"] == int(best_epoch)
    for name in ("Generator_weight_strong.pth", "Generator_weight_strong_best.pth"):
        first = torch.load(tmp_path / "straight" / name, weights_only=True)
        second = torch.load(os.path.join(resumed_dir, name), weights_only=True)
        assert all(torch.equal(first[key], second[key]) for key in first)
