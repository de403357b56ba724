"""The recovery attack per modality (visible-infrared pairs), its pairs' trial, and its one-time checks."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import recovery_attack
from configs import get_default_config, save_config
from data.datasets import build_dataset
from data.img_npy import batch_files, npy_dir_of, read_modalities, write_batch, write_modalities
from data.npy_pairs import PairDataset, SavedBatches
from data.splits import plan_splits
from data.synthetic_vi import make_regdb
from data.transforms import normalize
from engine.attack import checkpoint as checkpoint_module
from engine.attack import run as attack_run
from engine.attack.inversion import relative_feature_error
from engine.attack.models import authorization_model
from engine.attack.results import MODALITY_NOTE, results_markdown
from engine.attack.settings import AttackSettings
from engine.attack.trainer import identity_loss
from engine.protect.cross_modality import pair_selection, split_store
from engine.protect.engine import batch_spans
from evaluation.image_quality import ImageQuality, to_pixels
from evaluation.privacy import PrivacyScorer, modality_features, routed_forward
from modeling.agw_vi import VisibleInfraredAuthorization
from utils.errors import DatasetError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLI_TINY = ["--generator", "resnet_6blocks", "--device", "cpu", "--no_progress", "--total_epochs", "1",
            "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "0", "DATALOADER.NUM_WORKERS", "0"]


def images(count, seed, darker=1.0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, 3, 16, 12, generator=generator) * darker
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def write_vi_pairs(run_dir, modality_files=True):
    """Two train and three test batches; test batches 0, 1 infrared (dark), 2 visible; protected = noisy."""
    npy_dir = npy_dir_of(str(run_dir))
    layout = {"train": ("visible", "infrared"), "test": ("infrared", "infrared", "visible")}
    for split, modalities in layout.items():
        for index, modality in enumerate(modalities):
            original = images(2, seed=index + 10 * (split == "test"), darker=0.3 if modality == "infrared" else 1.0)
            protected = original + 0.2 * torch.randn(original.shape, generator=torch.Generator().manual_seed(index))
            write_batch(npy_dir, split, index, original, protected, np.arange(2) + 2 * index, np.ones(2))
            if modality_files:
                write_modalities(npy_dir, split, index, [modality] * 2)
    return npy_dir


# ---------------------------------------------------------------------------------------------
# the metric
# ---------------------------------------------------------------------------------------------
def flat(record, prefix=()):
    """{key path: number} of a nested record, for pytest.approx."""
    items = {}
    for key, value in record.items():
        items.update(flat(value, prefix + (key,)) if isinstance(value, dict) else {prefix + (key,): value})
    return items


def scored(pairs_of_batches):
    metric = ImageQuality(("protected",), MEAN, STD, groups="modality")
    metric.reset()
    for original, protected, labels in pairs_of_batches:
        metric.update(({"protected": protected}, original, labels))
    return metric.compute()


def test_each_modality_is_scored_as_its_images_alone():
    """A modality's record equals the metric run on that modality's rows only, mixed batches included."""
    original, protected = images(6, 1), images(6, 2)
    labels = np.array(["visible", "infrared", "visible", "visible", "infrared", "visible"])
    record = scored([(original, protected, labels), (original[:2], protected[:2], labels[:2])])
    assert record["num_images"] == 8 and set(record["per_modality"]) == {"visible", "infrared"}
    for modality in ("visible", "infrared"):
        rows = torch.tensor(np.flatnonzero(labels == modality))
        alone = scored([(original[rows], protected[rows], None), (original[rows[:1]], protected[rows[:1]], None)])
        assert flat(record["per_modality"][modality]) == pytest.approx(flat(alone))
        assert "per_modality" not in alone


def test_a_batch_of_one_modality_scores_the_same_numbers_overall_and_for_it():
    original, protected = images(3, 3), images(3, 4)
    record = scored([(original, protected, ["infrared"] * 3)])
    assert record["per_modality"] == {"infrared": {key: value for key, value in record.items() if key != "per_modality"}}


# ---------------------------------------------------------------------------------------------
# the pair files
# ---------------------------------------------------------------------------------------------
def test_pairs_read_their_modalities_only_when_every_batch_has_them(tmp_path):
    npy_dir = write_vi_pairs(tmp_path / "vi")
    test = PairDataset(npy_dir, "test")
    assert test.has_modalities
    assert [test.load_modalities(p).tolist() for p in range(3)] == [["infrared"] * 2, ["infrared"] * 2, ["visible"] * 2]
    plain = PairDataset(write_vi_pairs(tmp_path / "plain", modality_files=False), "test")
    assert not plain.has_modalities and plain.load_modalities(0) is None
    missing = batch_files(npy_dir, "test", 1).modality
    os.remove(missing)
    with pytest.raises(DatasetError, match=f"{missing} is missing, while .*test-0-modality.npy is there"):
        PairDataset(npy_dir, "test")


def test_a_modality_file_must_name_one_known_sensor_per_image(tmp_path):
    path = write_modalities(str(tmp_path), "train", 0, ["visible", "infrared"])
    assert read_modalities(path, 2).tolist() == ["visible", "infrared"]
    with pytest.raises(DatasetError, match="expected 3 sensor names"):
        read_modalities(path, 3)
    np.save(path, np.array(["visible", "thermal"]))
    with pytest.raises(DatasetError, match=r"unknown sensors \['thermal'\]"):
        read_modalities(path, 2)
    with pytest.raises(ValueError, match=r"got \['ultraviolet'\]"):
        write_modalities(str(tmp_path), "train", 1, ["ultraviolet"])


# ---------------------------------------------------------------------------------------------
# the attack's results
# ---------------------------------------------------------------------------------------------
def test_the_attack_reports_each_modality_beside_the_whole_test_split(tmp_path):
    npy_dir = write_vi_pairs(tmp_path / "vi")
    assert recovery_attack.main(["--npy_path", npy_dir, *CLI_TINY]) == 0
    results = json.loads((tmp_path / "vi" / "attack_results.json").read_text())
    record = results["reference"]["evaluations"]["0"]
    assert record["num_images"] == 6
    assert {m: part["num_images"] for m, part in record["per_modality"].items()} == {"infrared": 4, "visible": 2}
    # the protected rows need no generator: each modality's equals the metric on its batches alone
    test = PairDataset(npy_dir, "test")
    for modality, positions in (("infrared", (0, 1)), ("visible", (2,))):
        metric = ImageQuality(("protected",), MEAN, STD)
        metric.reset()
        for position in positions:
            protected, original = test.load_batch(position)
            metric.update(({"protected": protected}, original))
        alone = metric.compute()
        for protocol in ("reference_normalisation", "pixel_space"):
            assert record["per_modality"][modality][protocol]["protected"] == pytest.approx(
                alone[protocol]["protected"])
    markdown = (tmp_path / "vi" / "attack_results.md").read_text()
    assert "| reference | 0 | 4 | recovered (infrared) |" in markdown and MODALITY_NOTE in markdown


def test_pairs_without_modalities_keep_todays_results(tmp_path):
    npy_dir = write_vi_pairs(tmp_path / "plain", modality_files=False)
    assert recovery_attack.main(["--npy_path", npy_dir, *CLI_TINY]) == 0
    results = json.loads((tmp_path / "plain" / "attack_results.json").read_text())
    assert "per_modality" not in results["reference"]["evaluations"]["0"]
    markdown = (tmp_path / "plain" / "attack_results.md").read_text()
    assert markdown == results_markdown(results) and "(visible)" not in markdown and MODALITY_NOTE not in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| reference |")]) == 4


def test_a_run_checks_and_builds_its_settings_and_pairs_once(tmp_path, monkeypatch):
    npy_dir = write_vi_pairs(tmp_path / "vi", modality_files=False)
    calls = {"settings": 0, "resumable": 0, "pairs": 0}
    real_init, real_resumable, real_open = (AttackSettings.__post_init__, checkpoint_module.check_resumable,
                                            attack_run.open_attack_pairs)

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(AttackSettings, "__post_init__", counted("settings", real_init))
    monkeypatch.setattr(attack_run, "check_resumable", counted("resumable", real_resumable))
    monkeypatch.setattr(attack_run, "open_attack_pairs", counted("pairs", real_open))
    assert recovery_attack.main(["--npy_path", npy_dir, "--attacker", "both", *CLI_TINY]) == 0
    assert calls == {"settings": 2, "resumable": 2, "pairs": 1}


# ---------------------------------------------------------------------------------------------
# which images of a visible-infrared run get pairs
# ---------------------------------------------------------------------------------------------
class RecordingStore:
    """What a split's handlers would write: (split, batch index, record positions) per saved batch."""

    def __init__(self, npy_dir):
        self.npy_dir = npy_dir
        self.saved = []

    def save_pairs(self, split, batch_index, original, protected, pids, camids):
        self.saved.append((split, batch_index, original.tolist()))


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb")
    make_regdb(str(root), num_ids=8, images_per_id_cam=2, height=32, width=16, num_trials=3)
    return str(root)


def regdb_plan(root, weight):
    cfg = get_default_config()
    cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.DATASETS.TRIALS = "regdb", root, [2, 1]
    cfg.PIXELFADE.SAVE_IMAGE_NPY, cfg.PIXELFADE.BATCH_SIZE, cfg.TEST.WEIGHT = True, 4, weight
    cfg.PIXELFADE.TRAIN_ORDER = "every_image"
    return cfg, plan_splits(cfg)


def written_pairs(cfg, plan, npy_dir):
    """{role: [record paths in pair order]} of every split written through its split store."""
    store, selection, written = RecordingStore(npy_dir), pair_selection(cfg, plan), {"train": [], "test": []}
    for split_plan in plan.splits.values():
        split_store_ = split_store(store, split_plan, selection)
        for batch_index, (start, stop) in enumerate(batch_spans(len(split_plan.records), cfg.PIXELFADE.BATCH_SIZE)):
            rows = np.arange(start, stop)
            split_store_.save_pairs(split_plan.pairs_as[0], batch_index, rows, rows, rows, rows)
        for role, index, rows in store.saved:
            written[role] += [(index, split_plan.records[row].path, split_plan.modality) for row in rows]
        store.saved.clear()
    return {role: sorted(items) for role, items in written.items()}, selection


@pytest.mark.parametrize("weight", ["net_{trial}.t", "net.t"])
def test_a_visible_infrared_run_pairs_one_trials_train_split_with_that_trials_test_images(
        regdb_root, tmp_path, weight):
    """Trial 2 (first in DATASETS.TRIALS): its train split, and its test images once each, never a train image."""
    cfg, plan = regdb_plan(regdb_root, weight)
    written, selection = written_pairs(cfg, plan, str(tmp_path))
    dataset = build_dataset("regdb", regdb_root, trials=[2, 1])
    trial_2 = [t for trials in dataset.protocols.values() for t in trials if t.trial == 2]
    expected_test = {r.path for t in trial_2 for r in t.query + t.gallery}
    test_paths = [path for _, path, _ in written["test"]]
    assert selection.trial == 2 and sorted(test_paths) == sorted(expected_test)  # each once
    assert {path for _, path, _ in written["train"]} == {r.path for r in trial_2[0].train}
    assert not set(test_paths) & {path for _, path, _ in written["train"]}
    # without the selection trial 1's test images would be there too: some are trial 2's train images
    assert {r.path for r in dataset.test_images()} & {r.path for r in trial_2[0].train}
    # the queries (visible, the first protocol's) come first, then the gallery
    modalities = [modality for _, _, modality in written["test"]]
    assert modalities == ["visible"] * selection.num_query + ["infrared"] * (len(modalities) - selection.num_query)
    assert selection.num_query == len(trial_2[0].query)
    for index in {index for index, _, _ in written["test"]}:
        rows = [modality for i, _, modality in written["test"] if i == index]
        assert read_modalities(batch_files(str(tmp_path), "test", index).modality, len(rows)).tolist() == rows


# ---------------------------------------------------------------------------------------------
# the privacy table of a visible-infrared run
# ---------------------------------------------------------------------------------------------
STEM_SCALE = {"visible": 2.0, "infrared": -1.0}


class TwoStems(torch.nn.Module):
    """A model whose 'visible' stem doubles and 'infrared' stem negates the first pixels (one per modality)."""

    def __init__(self, modality="visible"):
        super().__init__()
        self.modality = modality

    def for_modality(self, modality):
        return TwoStems(modality)

    def forward(self, x):
        return STEM_SCALE[self.modality] * x.flatten(1)[:, :4]


def test_privacy_features_take_each_images_own_sensor_stem():
    batch = images(4, 5)
    labels = np.array(["infrared", "visible", "infrared", "visible"])
    features = modality_features(TwoStems(), batch, labels)
    expected = torch.stack([STEM_SCALE[m] * image.flatten()[:4] for m, image in zip(labels, batch)])
    assert torch.equal(features, expected)
    assert torch.equal(modality_features(TwoStems(), batch), 2.0 * batch.flatten(1)[:, :4])  # no sensors: as given


def test_gradients_reach_each_image_through_its_own_stem():
    batch = images(4, 6).requires_grad_(True)
    labels = np.array(["infrared", "visible", "visible", "infrared"])
    routed_forward(TwoStems(), batch, labels).sum().backward()
    grad = batch.grad.flatten(1)[:, :4]
    assert torch.equal(grad, torch.tensor([[STEM_SCALE[m]] * 4 for m in labels]))
    assert not batch.grad.flatten(1)[:, 4:].any()


class TwoViews(TwoStems):
    """A model whose 'visible' stem reads the first four values of an image, the 'infrared' one the next four."""

    def for_modality(self, modality):
        return TwoViews(modality)

    def forward(self, x):
        start = 0 if self.modality == "visible" else 4
        return x.flatten(1)[:, start:start + 4]


def test_the_identity_attackers_loss_compares_each_image_through_its_own_stem():
    originals = images(4, 7)
    labels = np.array(["infrared", "visible", "infrared", "visible"])
    settings = SimpleNamespace(pixel_mean=MEAN, pixel_std=STD)
    outputs = to_pixels(originals, MEAN, STD)
    outputs.flatten(1)[:, 4:8] += 0.1  # the generator errs only where the infrared stem looks
    routed = identity_loss(TwoViews(), outputs, originals, settings, labels).item()
    infrared = relative_feature_error(TwoViews("infrared")(normalize(outputs, MEAN, STD)[[0, 2]]),
                                      TwoViews("infrared")(originals[[0, 2]]))
    assert routed == pytest.approx(float(infrared.sum()) / 4, rel=1e-5) and routed > 0
    # Through the visible stem for every image the error would go unseen.
    assert identity_loss(TwoViews(), outputs, originals, settings).item() == pytest.approx(0.0, abs=1e-10)


def test_the_privacy_scorer_hands_each_query_batchs_sensors_to_the_recovery(tmp_path):
    npy_dir = npy_dir_of(str(tmp_path))
    for index, (modality, camera) in enumerate((("infrared", 0), ("infrared", 1), ("visible", 1))):
        original = images(2, seed=index)
        write_batch(npy_dir, "test", index, original, original + 0.1, np.array([0, 1]), np.full(2, camera))
        write_modalities(npy_dir, "test", index, [modality] * 2)
    settings = SimpleNamespace(pixel_mean=MEAN, pixel_std=STD)
    scorer = PrivacyScorer(PairDataset(npy_dir, "test"), 3, {"flat": lambda x: x.flatten(1)}, settings, "cpu")
    seen = []
    scorer.score(lambda protected, modalities: seen.append(list(modalities)) or protected)
    assert seen == [["infrared"] * 2, ["infrared"]]  # the 3 queries: batch 0 whole, then batch 1's first row


def test_saved_batches_carry_each_images_sensor(tmp_path):
    npy_dir = write_vi_pairs(tmp_path)
    train = SavedBatches(PairDataset(npy_dir, "train"))
    assert [list(train[k][2]) for k in range(2)] == [["visible"] * 2, ["infrared"] * 2]
    assert list(SavedBatches(PairDataset(npy_dir, "train"), {1: [1]})[0][2]) == ["infrared"]
    assert SavedBatches(PairDataset(write_vi_pairs(tmp_path / "plain", modality_files=False), "train"))[0][2] is None


def test_the_untrained_model_of_a_visible_infrared_run_is_its_agw_vi_network(tmp_path):
    protect_cfg = get_default_config()
    protect_cfg.DATASETS.NAMES, protect_cfg.MODEL.NAME = "sysu_mm01", "resnet18_nl"
    save_config(protect_cfg, str(tmp_path))
    model, description = authorization_model(get_default_config(), str(tmp_path), "cpu")
    assert isinstance(model, VisibleInfraredAuthorization) and description.startswith("UNTRAINED resnet18_nl")
