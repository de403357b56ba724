"""protect_image.py and recovery_attack.py on a synthetic text-to-image set (RSTPReid layout), end to end.

The checkpoint is an IRRA ``best.pth`` written here (``base_model.*`` with fp16 matrices, training heads,
no ``logit_scale``) around a tiny open_clip CLIP at IRRA's 384 x 128. The expected clean2clean scores
are computed independently: torchvision's Compose of IRRA's test transform, open_clip's own forward of
the same weights in fp32, open_clip's tokenizer, and IRRA's ``rank`` rules written out below.
"""
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from model_factories import TinyReID
from PIL import Image
from torchvision import transforms

import protect_image
import recovery_attack
from data.datasets import build_dataset
from data.splits import leakage_partition
from data.synthetic_text import make_text_dataset
from engine.protect.run import build_protect_config, run_fingerprint

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
FAST = ["--max_iter", "2", "--warmup_iter", "1", "--fade_num_iter", "2", "--batch_size", "8", "--device", "cpu",
        "--no_progress"]
KEYS = ["DATALOADER.NUM_WORKERS", "0", "PIXELFADE.NUM_GRIDS", "0"]
IRRA_HEADS = {"classifier.weight": (4, 64), "classifier.bias": (4,), "mlm_head.dense.weight": (64, 64),
              "cross_attn.in_proj_weight": (192, 64), "ln_post.weight": (64,), "ln_pre_t.weight": (64,)}


def open_clip_model(seed=0):
    """A tiny CLIP built by open_clip itself at 384 x 128 (IRRA's grid of 24 x 8 patches of 16)."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    vision = {"width": 64, "layers": 2, "patch_size": 16, "image_size": (384, 128), "head_width": 64}
    text = {"width": 64, "heads": 1, "layers": 2, "context_length": 77, "vocab_size": 49408}
    return CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()


def save_irra(path, clip):
    """IRRA's best.pth layout: matrices in fp16 (as IRRA converts them), heads beside, no logit_scale."""
    state = {f"base_model.{key}": (value.half() if value.dim() > 1 else value.clone())
             for key, value in clip.state_dict().items() if key != "logit_scale"}
    state.update({key: torch.randn(shape) for key, shape in IRRA_HEADS.items()})
    torch.save({"model": state, "epoch": 3, "optimizer": {}}, path)
    return str(path)


def fp32_reference(clip):
    """The same network with the checkpoint's fp16-rounded weights, in fp32 (what IRRA's fp32 run computes)."""
    rounded = {key: (value.half().float() if value.dim() > 1 else value) for key, value in clip.state_dict().items()}
    reference = open_clip_model()
    reference.load_state_dict(rounded)
    return reference


def irra_rank(similarity, query_pids, gallery_pids):
    """IRRA's utils/metrics.py rank, rewritten: CMC@1/5/10, mAP, mINP (fractions)."""
    order = torch.argsort(similarity, dim=1, descending=True, stable=True)
    matches = (gallery_pids[order] == query_pids[:, None]).float()
    found = matches.cumsum(1)
    cmc = (found > 0).float().mean(0)
    positions = torch.arange(1, matches.shape[1] + 1, dtype=torch.float32)
    ap = ((found / positions) * matches).sum(1) / matches.sum(1)
    inp = matches.sum(1) / (matches * positions).amax(1)
    last = matches.shape[1] - 1
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, last)]), "rank10": float(cmc[min(9, last)]),
            "mAP": float(ap.mean()), "mINP": float(inp.mean())}


def independent_scores(clip, dataset, image_source):
    """Text-to-image scores of the test captions against ``image_source(record) -> (3, 384, 128)`` images."""
    import open_clip

    images = torch.stack([image_source(index, record) for index, record in enumerate(dataset.gallery)])
    with torch.no_grad():
        image_features = clip.encode_image(images)
        text_features = clip.encode_text(open_clip.tokenize([c.text for c in dataset.query_captions]))
    similarity = torch.nn.functional.normalize(text_features, dim=1) @ \
        torch.nn.functional.normalize(image_features, dim=1).t()
    return irra_rank(similarity, torch.tensor(dataset.caption_pids), torch.tensor([r.pid for r in dataset.gallery]))


def irra_transform(record):
    compose = transforms.Compose([transforms.Resize((384, 128)), transforms.ToTensor(),
                                  transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    return compose(Image.open(record.path).convert("RGB"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    make_text_dataset("rstpreid", str(root / "data"), num_ids=16, num_cams=2, images_per_id_cam=2, height=32,
                      width=16)
    make_text_dataset("rstpreid", str(root / "small"), num_ids=4, num_cams=2, images_per_id_cam=2, height=32,
                      width=16)
    clip = open_clip_model()
    evaluator = torch.jit.script(TinyReID())
    torch.jit.save(evaluator, str(root / "evaluator.pt"))
    return {"root": str(root / "data"), "small": str(root / "small"), "clip": clip,
            "ckpt": save_irra(root / "best.pth", clip), "evaluator": str(root / "evaluator.pt")}


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    """The issue's command: only --dataset, --root and --reid_ckpt_path (no size, format, mean/std, name)."""
    output = tmp_path_factory.mktemp("runs") / "protect"
    argv = ["--dataset", "rstpreid", "--root", data["root"], "--reid_ckpt_path", data["ckpt"],
            "--output", str(output), "--save_image_npy"] + FAST + KEYS
    assert protect_image.main(argv) == 0
    return output


def results_of(folder):
    return json.loads((folder / "results.json").read_text())


def test_clean2clean_equals_irras_computation_with_the_default_input_contract(run_dir, data):
    config = (run_dir / "config.yaml").read_text()
    assert "- 384" in config and "- 128" in config and "relative" in config
    assert "NAME: resnet50_nl" in config and "FORMAT: auto" in config  # the file's shapes decide
    dataset = build_dataset("rstpreid", data["root"])
    expected = independent_scores(fp32_reference(data["clip"]), dataset, lambda _, record: irra_transform(record))
    scores = results_of(run_dir)
    assert set(scores["reid"]) == {"clean2clean", "clean2encry"}
    assert set(scores["reid_protocols"]) == {"text_to_image"}
    assert scores["reid_protocols"]["text_to_image"] == scores["reid"]
    for metric, value in expected.items():
        assert scores["reid"]["clean2clean"][metric] == pytest.approx(value, abs=1e-6), metric
    assert scores["reid"]["clean2clean"]["num_queries"] == len(dataset.query_captions) == 48
    assert scores["reid"]["clean2clean"]["num_gallery"] == len(dataset.gallery) == 24


def test_clean2encry_ranks_the_protected_images_the_run_saved(run_dir, data):
    """Captions against the saved protected test images, read back from img_npy, give clean2encry."""
    dataset = build_dataset("rstpreid", data["root"])
    protected = torch.cat([torch.from_numpy(np.load(run_dir / "img_npy" / f"encry-test-{i}-images.npy"))
                           for i in range(3)])
    order = {os.path.basename(r.path): row for row, r in enumerate(ordered_test_records(dataset))}
    expected = independent_scores(fp32_reference(data["clip"]), dataset,
                                  lambda _, record: protected[order[os.path.basename(record.path)]])
    for metric, value in expected.items():
        assert results_of(run_dir)["reid"]["clean2encry"][metric] == pytest.approx(value, abs=1e-5), metric
    markdown = (run_dir / "results.md").read_text()
    assert "each caption ranks the PROTECTED test images" in markdown
    assert "encry2encry and encry2clean do not exist" in markdown


def ordered_test_records(dataset):
    queries, rest = leakage_partition(dataset.gallery)
    return [dataset.gallery[i] for i in queries + rest]


def test_every_test_image_is_protected_once_queries_first_for_the_attack(run_dir, data):
    dataset = build_dataset("rstpreid", data["root"])
    ids = np.concatenate([np.load(run_dir / "img_npy" / f"test-{i}-ids.npy") for i in range(3)])
    cams = np.concatenate([np.load(run_dir / "img_npy" / f"test-{i}-camids.npy") for i in range(3)])
    num_query = results_of(run_dir)["run"]["num_query"]
    assert num_query == 6 and len(ids) == 24
    assert sorted(ids[:num_query]) == sorted({r.pid for r in dataset.gallery})
    assert cams.tolist() == [0] * num_query + [1] * (24 - num_query)
    train_ids = np.concatenate([np.load(run_dir / "img_npy" / name) for name in os.listdir(run_dir / "img_npy")
                                if name.startswith("train-") and name.endswith("-ids.npy")])
    assert set(train_ids.tolist()) <= {r.pid for r in dataset.train}


def test_the_attack_trains_and_scores_identity_leakage_with_an_independent_model(run_dir, data, tmp_path):
    output = tmp_path / "attack"
    assert recovery_attack.main(["--npy_path", str(run_dir), "--output", str(output), "--total_epochs", "1",
                                 "--generator", "resnet_6blocks", "--device", "cpu", "--no_progress",
                                 "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "0", "DATALOADER.NUM_WORKERS", "0",
                                 "ATTACK.EVAL_MODELS", f"['torchscript::{data['evaluator']}']"]) == 0
    privacy = json.loads((output / "attack_results.json").read_text())["privacy"]
    assert privacy["num_query"] == 6 and privacy["num_gallery"] == 18
    assert len(privacy["evaluators"]) == 2 and "evaluator.pt" in privacy["evaluators"][1]


def test_small_gallery_and_image_to_text(data, tmp_path):
    """8 test images (< 10, where IRRA's rank fails): Rank-10 takes the last position; image-to-text on request."""
    output = tmp_path / "small"
    argv = ["--dataset", "rstpreid", "--root", data["small"], "--reid_ckpt_path", data["ckpt"],
            "--output", str(output)] + FAST + KEYS + ["TEXT.IMAGE_TO_TEXT", "True"]
    assert protect_image.main(argv) == 0
    scores = results_of(output)
    clean = scores["reid"]["clean2clean"]
    assert clean["num_gallery"] == 8 and clean["clipped_ranks"] == [10] and clean["rank10"] == 1.0
    assert set(scores["reid_protocols"]) == {"text_to_image", "image_to_text"}
    image_to_text = scores["reid_protocols"]["image_to_text"]["clean2clean"]
    assert image_to_text["num_queries"] == 8 and image_to_text["num_gallery"] == 16
    assert "**image_to_text**" in (output / "results.md").read_text()


def config(*opts):
    return build_protect_config("", list(opts), {"OUTPUT_DIR": "x"})


@pytest.mark.parametrize("dataset", ["cuhk_pedes", "icfg_pedes", "rstpreid"])
def test_the_clip_input_contract_is_the_default_for_text_data_sets(dataset):
    cfg = config("DATASETS.NAMES", dataset)
    assert list(cfg.INPUT.IMG_SIZE) == [384, 128]
    assert list(cfg.INPUT.PIXEL_MEAN) == CLIP_MEAN and list(cfg.INPUT.PIXEL_STD) == CLIP_STD
    assert (cfg.PIXELFADE.EPSILON_MODE, cfg.PIXELFADE.EPSILON) == ("relative", 0.06)
    assert "bilinear Resize(384, 128)" in run_fingerprint(cfg, "digest")["input_transform"]


def test_set_keys_win_over_the_clip_defaults_and_other_sets_keep_theirs():
    cfg = config("DATASETS.NAMES", "rstpreid", "INPUT.IMG_SIZE", "[224, 224]", "PIXELFADE.EPSILON", "0.1")
    assert list(cfg.INPUT.IMG_SIZE) == [224, 224] and cfg.PIXELFADE.EPSILON == 0.1
    assert cfg.PIXELFADE.EPSILON_MODE == "relative"
    assert "Resize(224, 224)" in run_fingerprint(cfg, "digest")["input_transform"]
    market = config("DATASETS.NAMES", "market1501")
    assert list(market.INPUT.IMG_SIZE) == [256, 128] and market.PIXELFADE.EPSILON_MODE == "absolute"
    assert "input_transform" not in run_fingerprint(market, "digest")
    irra_on_market = config("DATASETS.NAMES", "market1501", "MODEL.FORMAT", "irra")
    assert list(irra_on_market.INPUT.PIXEL_MEAN) == CLIP_MEAN


def test_leakage_partition_takes_the_first_image_of_each_person_with_two():
    from data.datasets.bases import ImageRecord

    gallery = [ImageRecord(f"{i}.jpg", pid, -1) for i, pid in enumerate([5, 7, 5, 9, 7, 5])]
    assert leakage_partition(gallery) == ([0, 1], [2, 3, 4, 5])


def one_error_line(capsys):
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("protect_image.py: error: "), errors
    return errors[0]


def test_bad_settings_stop_before_anything_is_written(data, tmp_path, capsys):
    output = tmp_path / "bad"
    base = ["--dataset", "rstpreid", "--root", data["root"], "--output", str(output)] + FAST
    with_ckpt = base + ["--reid_ckpt_path", data["ckpt"]] + KEYS
    assert protect_image.main(with_ckpt + ["TEST.EVAL_MODELS", f"['torchscript::{data['evaluator']}']"]) == 2
    assert "TEST.EVAL_MODELS must be empty with a text-to-image data set" in one_error_line(capsys)
    assert protect_image.main(base + ["--random_init"] + KEYS) == 2
    assert "--dataset rstpreid needs a CLIP model with a text tower" in one_error_line(capsys)
    assert protect_image.main(with_ckpt + ["TEXT.IMAGE_TO_TEXT", "1"]) == 2
    assert "TEXT.IMAGE_TO_TEXT" in one_error_line(capsys)
    assert not output.exists()


def test_run_sh_lists_the_text_targets_and_names_what_is_missing(tmp_path):
    usage = subprocess.run(["bash", "run.sh", "nonsense"], check=False, capture_output=True, text=True)
    assert usage.returncode == 2 and "|cuhk_pedes|icfg_pedes|rstpreid|demo_t2i]" in usage.stderr
    env = dict(os.environ, DATA_ROOT=str(tmp_path / "none"), CKPT_DIR=str(tmp_path / "ckpt"))
    missing = subprocess.run(["bash", "run.sh", "icfg_pedes"], check=False, capture_output=True, text=True, env=env)
    assert missing.returncode == 1
    assert f"missing checkpoint {tmp_path}/ckpt/icfg_pedes_irra_best.pth" in missing.stderr
    assert "ICFG-PEDES with imgs/ and ICFG-PEDES.json or ICFG_PEDES.json" in missing.stderr
    assert "zifyloo/SSAN" in missing.stderr and "anosorae/IRRA" in missing.stderr


def test_the_demo_runs_end_to_end_and_reports_the_runs_numbers(tmp_path):
    from experiments import demo_t2i

    output = tmp_path / "demo"
    assert demo_t2i.main(["--output", str(output), "--small", "--device", "cpu", "--no_progress"]) == 0
    report = (output / demo_t2i.REPORT_NAME).read_text()
    summary = json.loads((output / demo_t2i.SUMMARY_NAME).read_text())
    for method in demo_t2i.METHODS:
        clean = results_of(output / method)["reid"]["clean2encry"]
        assert summary["methods"][method]["reid"]["clean2encry"] == clean
        assert "| clean2encry |" in report and f"{100 * clean['mAP']:.1f}" in report
    assert summary["figure"]["caption"] in report
    with Image.open(output / demo_t2i.FIGURE_NAME) as figure:
        assert figure.width > 300 and figure.height > 300


@pytest.mark.parametrize("argv, threads", [([], 1), (["--threads", "0"], 0), (["--threads", "2"], 2)])
def test_the_text_demo_runs_on_one_thread_unless_told_otherwise(monkeypatch, tmp_path, argv, threads):
    from experiments import demo_t2i

    seen = []

    def fake_run_demo(output, scale, device, threads, show_progress=True):
        seen.append(threads)
        return {"report": "ok"}

    monkeypatch.setattr(demo_t2i, "run_demo", fake_run_demo)
    monkeypatch.setattr("experiments.demo_steps.configure_threads", lambda *args, **kwargs: None)
    assert demo_t2i.main(["--output", str(tmp_path), *argv]) == 0
    assert seen == [threads]
