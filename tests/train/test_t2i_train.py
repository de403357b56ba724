"""Training a CLIP text-image model: IRRA's SDM and ID losses, the trainer, its checkpoints and its command."""
import json
import math
import os

import pytest
import torch
from ignite.engine import Events

from configs import get_default_config
from data.datasets import build_dataset
from data.loaders import read_image
from data.synthetic_text import make_text_dataset
from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, build_clip_eval_transform
from engine.train.text_image import CLASSIFIER_FILE, CLIP_FILE, IRRA_FILE, TextImageSettings, WarmupCosine, run
from evaluation.text_to_image import evaluate_text_to_image
from modeling import build_authorization_model, read_checkpoint
from modeling.authorization import detect_format
from modeling.text_image_losses import SDM_EPSILON, id_loss, identity_classifier, sdm_loss, true_match_distribution
from tools import train_text_image

SIZE = (64, 32)
CAPTIONS = ["a tall person with black hair wearing a red t-shirt", "a walker in blue shorts and white shoes."]


# ------------------------------------------------------------------------------------------------
# Losses, against values computed here in plain Python floats
# ------------------------------------------------------------------------------------------------
def _cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _sdm_by_hand(images, texts, pids, scale):
    """Both directions of sum_j p_ij (log p_ij - log(q_ij + 1e-8)), mean over rows, summed."""
    n = len(pids)
    q = [[(pids[i] == pids[j]) / sum(pids[i] == pids[k] for k in range(n)) for j in range(n)] for i in range(n)]
    total = 0.0
    for rows, columns in ((texts, images), (images, texts)):
        for i in range(n):
            logits = [scale * _cosine(rows[i], columns[j]) for j in range(n)]
            norm = sum(math.exp(v) for v in logits)
            p = [math.exp(v) / norm for v in logits]
            total += sum(p[j] * (math.log(p[j]) - math.log(q[i][j] + 1e-8)) for j in range(n)) / n
    return total


def test_sdm_equals_a_3x3_case_computed_by_hand():
    images = [[1.0, 2.0], [0.5, -1.0], [-2.0, 0.3]]
    texts = [[0.9, 1.5], [1.0, -0.2], [-1.0, 1.0]]
    pids = [4, 4, 7]
    value = sdm_loss(torch.tensor(images, dtype=torch.float64), torch.tensor(texts, dtype=torch.float64),
                     torch.tensor(pids), logit_scale=3.0)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(_sdm_by_hand(images, texts, pids, 3.0), rel=1e-12)
    # Swapping the modalities swaps the two directions: the sum is the same.
    swapped = sdm_loss(torch.tensor(texts, dtype=torch.float64), torch.tensor(images, dtype=torch.float64),
                       torch.tensor(pids), logit_scale=3.0)
    assert float(swapped) == pytest.approx(float(value), rel=1e-12)


def test_true_match_distribution_rows_share_the_mass_among_the_same_identity():
    q = true_match_distribution(torch.tensor([1, 2, 1, 1]))
    expected = torch.tensor([[1 / 3, 0, 1 / 3, 1 / 3], [0, 1, 0, 0], [1 / 3, 0, 1 / 3, 1 / 3], [1 / 3, 0, 1 / 3, 1 / 3]])
    assert torch.allclose(q, expected)


def test_sdm_is_minimal_when_the_similarities_match_the_label_distribution():
    torch.manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    # Each identity on its own axis: cosine 1 within an identity, 0 across, so with IRRA's scale 50 the
    # softmax rows are the true-match distribution up to e^-50.
    matched = torch.eye(3, dtype=torch.float64)[pids]
    best = float(sdm_loss(matched, matched, pids))
    floor = -2 * math.log(1 + len(pids) * SDM_EPSILON)  # KL(p || q + eps) >= -log(sum(q + eps)), per direction
    assert floor <= best < 1e-6
    for _ in range(20):
        images = matched + 0.3 * torch.randn(6, 3, dtype=torch.float64)
        texts = matched + 0.3 * torch.randn(6, 3, dtype=torch.float64)
        assert float(sdm_loss(images, texts, pids)) > best + 1e-3
    # A lower scale blurs the rows away from the label distribution: larger loss.
    assert float(sdm_loss(matched, matched, pids, logit_scale=5.0)) > best + 1e-3


def test_id_loss_is_the_mean_of_the_two_cross_entropies():
    image_logits = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
    text_logits = [[-0.5, 1.5, 0.0], [1.0, 1.0, 3.0]]
    labels = [0, 2]

    def cross_entropy(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(rows, labels)) / len(rows)

    value = id_loss(torch.tensor(image_logits, dtype=torch.float64), torch.tensor(text_logits, dtype=torch.float64),
                    torch.tensor(labels))
    assert float(value) == pytest.approx((cross_entropy(image_logits) + cross_entropy(text_logits)) / 2, rel=1e-12)


def test_identity_classifier_is_initialised_as_irra():
    torch.manual_seed(0)
    classifier = identity_classifier(64, 300)
    assert classifier.weight.shape == (300, 64) and torch.equal(classifier.bias, torch.zeros(300))
    assert 0.0009 < float(classifier.weight.detach().std()) < 0.0011


def test_schedule_warms_up_then_follows_a_cosine_to_zero():
    schedule = WarmupCosine(60)  # IRRA: 5 warm-up epochs from 0.1 x, cosine over the other 55
    assert schedule.warmup == 5
    assert [schedule(e) for e in (0, 1, 5)] == pytest.approx([0.1, 0.1 * 0.8 + 0.2, 1.0])
    assert schedule(59) == pytest.approx(0.5 * (1 + math.cos(math.pi * 54 / 55)))
    assert WarmupCosine(2).warmup == 0 and WarmupCosine(2)(1) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------
# Training runs on a tiny synthetic RSTPReid
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i_train")
    make_text_dataset("rstpreid", root, num_ids=8, num_cams=2, images_per_id_cam=2, height=SIZE[0], width=SIZE[1])
    return str(root)


def settings(data_root, output, **changes):
    values = {"dataset": "rstpreid", "root": data_root, "output": str(output), "epochs": 2, "batch_size": 8,
              "lr": 1e-3, "image_size": SIZE, "device": "cpu", "seed": 0, "show_progress": False}
    return TextImageSettings(**{**values, **changes})


def images_batch():
    return torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(5))


def fixed_batch(data_root):
    """Every train image (eval transform) with its first caption, and the labels."""
    dataset = build_dataset("rstpreid", data_root)
    transform = build_clip_eval_transform(SIZE)
    images = torch.stack([transform(read_image(record.path)) for record in dataset.train])
    first = {}
    for caption in dataset.train_captions:
        first.setdefault(caption.image_index, caption.text)
    return images, [first[index] for index in range(len(dataset.train))], torch.tensor([r.pid for r in dataset.train])


def watch_training(store, data_root):
    """on_trainer hook: the SDM + ID loss on a fixed batch before and after training, and the trained features."""
    images, captions, pids = fixed_batch(data_root)

    def attach(trainer, objects):
        model, classifier = objects["model"], objects["classifier"]

        def loss():
            with torch.no_grad():
                image_features = model(images)
                text_features = model.encode_captions(captions)
                return float(sdm_loss(image_features, text_features, pids)
                             + id_loss(classifier(image_features), classifier(text_features), pids))

        trainer.add_event_handler(Events.STARTED, lambda engine: store.setdefault("losses", []).append(loss()))

        @trainer.on(Events.COMPLETED)
        def _after(engine):
            store["losses"].append(loss())
            model.eval()
            with torch.no_grad():
                store["image"] = model(images_batch())
            store["text"] = model.encode_captions(CAPTIONS)

    return attach


def stop_after_first_epoch(trainer, objects):
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())


def clip_cfg():
    cfg = get_default_config()
    cfg.MODEL.FORMAT, cfg.MODEL.NAME = "auto", "clip_tiny"  # the file's shapes decide; the name must be a CLIP one
    cfg.INPUT.IMG_SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = list(SIZE), list(CLIP_PIXEL_MEAN), list(CLIP_PIXEL_STD)
    return cfg


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("full")
    store = {}
    results = run(settings(data_root, output, irra_export=True), on_trainer=watch_training(store, data_root))
    return output, results, store


def test_two_epochs_lower_the_training_loss_and_score_the_test_split(full_run):
    output, results, store = full_run
    before, after = store["losses"]
    assert after < before - 2
    assert [row["epoch"] for row in results["epochs"]] == [1, 2]
    assert [row["epoch"] for row in results["evaluations"]] == [0, 1, 2]
    for row in results["evaluations"]:
        assert 0 <= row["rank1"] <= row["rank5"] <= row["rank10"] <= 1 and 0 < row["mAP"] <= 1
    on_disk = json.loads((output / "results.json").read_text())
    assert on_disk["final"] == on_disk["evaluations"][-1] and on_disk["run"]["image_size"] == list(SIZE)
    assert sorted(p.name for p in output.glob("*.pt")) == ["training_checkpoint_2.pt"]
    # No terminal: one log line per epoch, no progress bar.
    log = (output / "log.txt").read_text()
    assert [line.split("train_t2i INFO: ")[1][:11] for line in log.splitlines() if "/2: lr " in line] == [
        "epoch 1/2: ", "epoch 2/2: "]


def load_export(path, expected_format, trained):
    """The exported file's state and model, after checking its detected format and trained image features."""
    state = read_checkpoint(str(path))
    assert detect_format(state, str(path)) == expected_format
    model = build_authorization_model(clip_cfg(), str(path), "cpu")
    with torch.no_grad():
        assert torch.allclose(model(images_batch()), trained["image"], atol=1e-6)
    return state, model


def test_exported_clip_file_is_auto_detected_and_gives_the_trained_features(full_run, data_root):
    output, results, trained = full_run
    state, model = load_export(output / CLIP_FILE, "clip", trained)
    assert "logit_scale" in state and not any(key.startswith("classifier") for key in state)
    assert torch.allclose(model.encode_captions(CAPTIONS), trained["text"], atol=1e-6)
    # The scores in results.json are those of the exported model on the test split.
    dataset = build_dataset("rstpreid", data_root)
    transform = build_clip_eval_transform(SIZE)
    with torch.no_grad():
        gallery = model(torch.stack([transform(read_image(record.path)) for record in dataset.gallery]))
    scores = evaluate_text_to_image(model.encode_captions([c.text for c in dataset.query_captions]), gallery,
                                    dataset.caption_pids, [record.pid for record in dataset.gallery])["text_to_image"]
    final = results["final"]
    assert all(final[key] == pytest.approx(scores[key], abs=1e-6) for key in ("rank1", "rank5", "mAP", "mINP"))
    head = torch.load(output / CLASSIFIER_FILE, weights_only=True)
    assert set(head) == {"weight", "bias"} and head["weight"].shape == (4, 64)  # 4 train identities, 64-d


def test_irra_export_loads_as_irra_with_the_same_features(full_run, caplog):
    output, _, trained = full_run
    state, _ = load_export(output / IRRA_FILE, "irra", trained)
    assert "classifier.weight" in state and not any(key.startswith("base_model.logit_scale") for key in state)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(full_run, data_root, tmp_path):
    output, results, _ = full_run
    stopped = run(settings(data_root, tmp_path, irra_export=True), on_trainer=stop_after_first_epoch)
    assert [row["epoch"] for row in stopped["epochs"]] == [1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".pth")) == ["training_checkpoint_1.pt"]
    resumed = run(settings(data_root, tmp_path, irra_export=True))
    for name in (CLIP_FILE, CLASSIFIER_FILE):
        expected = torch.load(output / name, weights_only=True)
        got = torch.load(tmp_path / name, weights_only=True)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[key], got[key]) for key in expected), name
    for key in ("loss", "sdm", "id", "lr", "batches"):
        assert [row[key] for row in resumed["epochs"]] == [row[key] for row in results["epochs"]], key
    assert resumed["evaluations"] == results["evaluations"]


# ------------------------------------------------------------------------------------------------
# The command: bad input is one line and exit status 2, before anything is written
# ------------------------------------------------------------------------------------------------
def command(argv):
    """The command's exit status, whether main returns it or argparse exits with it."""
    try:
        return train_text_image.main(argv)
    except SystemExit as stop:
        return stop.code


def error_line(capsys):
    """The one error line on stderr (log lines of the data set reader may come before it)."""
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("train_text_image.py: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0]
    return errors[0]


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "market1501"], "--dataset: expected one of cuhk_pedes, icfg_pedes, rstpreid, got 'market1501'"),
    (["--image_size", "60", "32"], "--image_size: expected H W, two positive multiples of the patch size 16"),
    (["--epochs", "0"], "--epochs: expected a whole number >= 1, got 0"),
    (["--batch_size", "1"], "--batch_size: expected a whole number >= 2, got 1"),
    (["--lr", "-1"], "--lr: expected a positive number, got -1.0"),
    (["--temperature", "0"], "--temperature: expected a positive number, got 0.0"),
    (["--arch", "RN50"], "--arch: expected one of ViT-B-16, clip_tiny, got 'RN50'"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--init", "missing.pth"], "--init: expected an existing CLIP or IRRA checkpoint file, got 'missing.pth'"),
])
def test_bad_flags_are_one_line_and_exit_2(data_root, tmp_path, capsys, extra, message):
    argv = ["--dataset", "rstpreid", "--root", data_root, "--output", str(tmp_path / "out"), "--image_size", "64", "32",
            "--device", "cpu", *extra]
    assert command(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train_text_image.py: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_init_that_is_not_clip_and_missing_data_are_one_line_errors(data_root, tmp_path, capsys):
    wrong = tmp_path / "agw.pth"
    torch.save({"base.conv1.weight": torch.zeros(2, 3, 1, 1)}, wrong)
    argv = ["--dataset", "rstpreid", "--root", data_root, "--output", str(tmp_path / "out"), "--image_size", "64", "32",
            "--device", "cpu", "--init", str(wrong)]
    assert command(argv) == 2
    assert "--init expects a CLIP state dict or an IRRA checkpoint" in error_line(capsys)
    assert command(["--dataset", "cuhk_pedes", "--root", data_root, "--output", str(tmp_path / "out")]) == 2
    assert "CUHK-PEDES" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_rerun_with_other_settings_is_refused(full_run, data_root, capsys):
    output, _, _ = full_run
    argv = ["--dataset", "rstpreid", "--root", data_root, "--output", str(output), "--image_size", "64", "32",
            "--device", "cpu", "--epochs", "2", "--batch_size", "8", "--lr", "0.002", "--seed", "0"]
    assert command(argv) == 2
    assert "was written by a different training run (lr: 0.001 -> 0.002)" in error_line(capsys)
    assert os.path.isfile(output / CLIP_FILE)


def test_init_from_an_irra_file_starts_from_its_weights_at_irra_lr(full_run, data_root, tmp_path):
    output, results, _ = full_run
    started = run(settings(data_root, tmp_path, epochs=1, lr=None, init=str(output / IRRA_FILE)))
    assert started["run"]["lr"] == 1e-5
    assert started["evaluations"][0] == {**results["evaluations"][-1], "epoch": 0}
