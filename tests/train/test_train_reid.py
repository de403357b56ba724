"""train_reid.py / engine.train.reid: schedule, sampler, augmentation, learning, resume, CLI errors."""
import os
import subprocess
import sys

import helpers
import pytest
import torch
from helpers import REPO, fake_venv
from ignite.engine import Events
from model_factories import register_tiny_backbone
from torch import nn

import train_reid
from configs import get_default_config
from data.samplers import IdentityBatchSampler
from data.synthetic import make_market1501
from data.transforms import RandomErasing, build_train_transform
from engine.common import resume
from engine.train import reid as reid_trainer
from engine.train import reid_recipe, reid_settings
from engine.train.curves import training_curves_figure
from engine.train.schedule import WarmupMultiStepLR, lr_at_epoch
from modeling import build_authorization_model, build_model

TINY = "tiny_test_cnn"


register_tiny_backbone(TINY)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_market1501(root, num_ids=16, num_cams=4, images_per_id_cam=3, height=64, width=32)
    return str(root)


def train_cfg(root, output, epochs=3, **solver):
    return helpers.train_cfg(root, output, TINY, epochs, **solver)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_lr_schedule_per_epoch_matches_reference():
    cfg = get_default_config()
    expected = {1: 3.5e-4 * 0.109, 9: 3.5e-4 * (0.01 * 0.1 + 0.9), 10: 3.5e-4, 39: 3.5e-4, 40: 3.5e-5, 69: 3.5e-5,
                70: 3.5e-6, 120: 3.5e-6}
    for epoch, lr in expected.items():
        assert lr_at_epoch(cfg, epoch) == pytest.approx(lr, rel=1e-12)
    assert f"{lr_at_epoch(cfg, 1):.1e}" == "3.8e-05"
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = WarmupMultiStepLR.from_config(optimizer, cfg)
    seen = {}
    for epoch in range(1, 121):  # stepped on EPOCH_STARTED, as the trainer does
        scheduler.step()
        seen[epoch] = optimizer.param_groups[0]["lr"]
    for epoch, lr in expected.items():
        assert seen[epoch] == pytest.approx(lr, rel=1e-12)


def test_optimizer_one_group_per_parameter_with_decay_everywhere():
    cfg = get_default_config()
    cfg.MODEL.NAME = TINY
    model = build_model(cfg, 5)
    optimizer = reid_recipe.build_optimizer(cfg, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert isinstance(optimizer, torch.optim.Adam) and len(optimizer.param_groups) == len(trainable)
    assert all(g["weight_decay"] == 5e-4 and g["lr"] == 3.5e-4 for g in optimizer.param_groups)
    assert not model.bottleneck.bias.requires_grad
    assert all(g["params"][0] is not model.bottleneck.bias for g in optimizer.param_groups)
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.2)


def test_sampler_batches_as_the_trainer_uses_them():
    pids = [p for p in range(10) for _ in range(5 + p % 4)]
    for world_size in (1, 2):
        slices = [reid_recipe.RankSlicedBatches(IdentityBatchSampler(pids, 4, 4, seed=3), 4, world_size, rank)
                  for rank in range(world_size)]
        for s in slices:
            s.set_epoch(2)
        per_rank = [s.batches() for s in slices]
        assert len({len(b) for b in per_rank}) == 1 and per_rank[0]
        for step in zip(*per_rank):
            ids = []
            for batch in step:
                assert len(batch) == 16 // world_size
                batch_ids = [pids[i] for i in batch]
                for start in range(0, len(batch), 4):  # K consecutive images of one identity
                    assert len(set(batch_ids[start:start + 4])) == 1
                ids += batch_ids[::4]
            assert len(ids) == len(set(ids)) == 4  # P identities per step, none twice, none on two ranks


def test_random_erasing_fills_raw_values_after_normalisation():
    cfg = get_default_config()
    cfg.INPUT.IMG_SIZE = [32, 16]
    cfg.INPUT.PROB, cfg.INPUT.RE_PROB, cfg.INPUT.PADDING = 0.0, 1.0, 0
    from PIL import Image

    image = Image.new("RGB", (16, 32), (0, 0, 0))
    torch.manual_seed(0)
    erased = build_train_transform(cfg)(image)
    normalised_black = [(0 - m) / s for m, s in zip(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)]
    for channel, raw in enumerate((0.485, 0.456, 0.406)):
        values = erased[channel]
        assert (values == raw).sum() >= 0.02 * 32 * 16
        assert torch.all((values == raw) | torch.isclose(values, torch.tensor(normalised_black[channel])))
    untouched = RandomErasing(probability=0.0)(torch.zeros(3, 8, 4))
    assert torch.equal(untouched, torch.zeros(3, 8, 4))


def test_training_raises_map_well_above_untrained(data_root, tmp_path):
    cfg = train_cfg(data_root, tmp_path / "run", epochs=6)
    dataset = reid_trainer.load_train_dataset(cfg)
    model = build_model(cfg, dataset.num_train_pids)
    records, num_query = reid_trainer.eval_records(dataset)
    loader = reid_trainer.build_loader(records, reid_trainer.build_eval_transform(cfg), 128)
    before = reid_trainer.evaluate(model, loader, records, num_query, cfg, "cpu")
    results = reid_trainer.run(cfg, reid_trainer.TrainOptions(show_progress=False))
    after = results["final"]
    assert after["epoch"] == 6 and after["mAP"] > before["mAP"] + 0.10, (before, after)
    files = set(os.listdir(cfg.OUTPUT_DIR))
    assert {"results.json", "results.md", "training_curves.png", "config.yaml", f"{TINY}_model_6.pth"} <= files
    assert [row["epoch"] for row in results["epochs"]] == list(range(1, 7))


def _interrupt_at(epoch):
    def attach(trainer):
        @trainer.on(Events.ITERATION_COMPLETED)
        def _boom(engine):
            if engine.state.epoch == epoch:
                raise KeyboardInterrupt("simulated interruption")
    return attach


def _record_started_epochs(started):
    def attach(trainer):
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.state.epoch))
    return attach


def test_interrupted_run_resumes_after_its_last_epoch_to_identical_weights(data_root, tmp_path):
    """The resume point follows every epoch, not only SOLVER.CHECKPOINT_PERIOD's (2 here): stopped in epoch 2,
    the run goes on from epoch 1 and ends with the uninterrupted run's weights."""
    full = train_cfg(data_root, tmp_path / "full", epochs=3, CHECKPOINT_PERIOD=2)
    reid_trainer.run(full, reid_trainer.TrainOptions(show_progress=False))
    broken = train_cfg(data_root, tmp_path / "broken", epochs=3, CHECKPOINT_PERIOD=2)
    with pytest.raises(KeyboardInterrupt):
        reid_trainer.run(broken, reid_trainer.TrainOptions(show_progress=False, on_trainer=_interrupt_at(2)))
    assert sorted(f for f in os.listdir(broken.OUTPUT_DIR) if f.endswith((".pth", ".pt"))) == [
        "training_checkpoint_1.pt"]
    started = []
    reid_trainer.run(broken, reid_trainer.TrainOptions(show_progress=False, on_trainer=_record_started_epochs(started)))
    assert started == [2, 3]
    assert sorted(f for f in os.listdir(broken.OUTPUT_DIR) if f.endswith(".pth")) == [
        f"{TINY}_model_2.pth", f"{TINY}_model_3.pth"]
    for name in (f"{TINY}_model_2.pth", f"{TINY}_model_3.pth"):
        a = torch.load(os.path.join(full.OUTPUT_DIR, name), weights_only=True)
        b = torch.load(os.path.join(broken.OUTPUT_DIR, name), weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ca = torch.load(os.path.join(full.OUTPUT_DIR, "training_checkpoint_3.pt"), weights_only=True)
    cb = torch.load(os.path.join(broken.OUTPUT_DIR, "training_checkpoint_3.pt"), weights_only=True)
    assert all(torch.equal(ca["center_param"][k], cb["center_param"][k]) for k in ca["center_param"])
    assert all(torch.equal(x, y) for x, y in zip(ca["optimizer"]["state"][0].values(),
                                                 cb["optimizer"]["state"][0].values()))
    assert not [f for f in os.listdir(broken.OUTPUT_DIR) if f.startswith("training_checkpoint_")
                and f != "training_checkpoint_3.pt"]


def test_progress_bar_metrics_are_the_current_epochs_mean(data_root, tmp_path):
    """What the bar shows after each step: the mean of this epoch's steps so far, restarting every epoch."""
    seen = []

    def attach(trainer):
        @trainer.on(Events.ITERATION_COMPLETED)
        def _record(engine):
            seen.append((engine.state.epoch, engine.state.output["loss"], engine.state.metrics["loss"],
                         engine.state.output["triplet"], engine.state.metrics["triplet"]))

    cfg = train_cfg(data_root, tmp_path / "bar", epochs=2)
    results = reid_trainer.run(cfg, reid_trainer.TrainOptions(show_progress=False, on_trainer=attach))
    for epoch in (1, 2):
        steps = [row for row in seen if row[0] == epoch]
        assert len(steps) >= 2
        for count, row in enumerate(steps, start=1):
            assert row[2] == pytest.approx(sum(r[1] for r in steps[:count]) / count, rel=1e-12)
            assert row[4] == pytest.approx(sum(r[3] for r in steps[:count]) / count, rel=1e-12)
        assert steps[-1][2] == pytest.approx(results["epochs"][epoch - 1]["loss"], rel=1e-12)


def _overlapping(boxes):
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


@pytest.mark.parametrize("epochs, evaluated", [(40, (20, 40)), (1, (1,)), (120, (40, 80, 120))])
def test_training_curves_span_the_trained_epochs_with_readable_ticks(epochs, evaluated):
    rows = [{"epoch": e, "loss": 9.0 / e, "id": 6.0 / e, "triplet": 3.0 / e} for e in range(1, epochs + 1)]
    results = {"epochs": rows,
               "evaluations": [{"epoch": e, "mAP": 0.4 + e / 1000, "rank1": 0.6 + e / 1000} for e in evaluated]}
    figure = training_curves_figure(results)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    losses, scores = figure.axes
    assert [line.get_label() for line in losses.get_lines()] == ["loss", "id", "triplet"]
    assert [line.get_label() for line in scores.get_lines()] == ["mAP", "Rank-1"]
    assert list(scores.get_lines()[0].get_xdata()) == list(evaluated)
    for axis in (losses, scores):
        low, high = axis.get_xlim()
        assert (low, high) == ((1, epochs) if epochs > 1 else (0.5, 1.5))  # no epoch beyond the last trained one
        x_ticks = [t for t in axis.get_xticks() if low <= t <= high]
        y_ticks = [t for t in axis.get_yticks() if axis.get_ylim()[0] <= t <= axis.get_ylim()[1]]
        assert x_ticks and all(float(t).is_integer() for t in x_ticks) and max(x_ticks) <= epochs
        assert len(y_ticks) >= 4, y_ticks  # more than the minimum and the maximum
        for labels in (axis.get_xticklabels(), axis.get_yticklabels()):
            boxes = [label.get_window_extent(renderer) for label in labels if label.get_visible() and label.get_text()]
            assert boxes and not _overlapping(boxes)
    panels = [axis.get_tightbbox(renderer) for axis in figure.axes]
    assert not _overlapping(panels)  # titles, tick labels and axis labels of the two panels stay apart
    assert figure.get_layout_engine() is not None


def test_checkpoint_loads_through_protect_image_path(data_root, tmp_path):
    cfg = train_cfg(data_root, tmp_path / "ckpt", epochs=1)
    reid_trainer.run(cfg, reid_trainer.TrainOptions(show_progress=False))
    path = os.path.join(cfg.OUTPUT_DIR, f"{TINY}_model_1.pth")
    state = torch.load(path, weights_only=True)
    assert any(k.startswith("classifier.") for k in state) and "bottleneck.bias" in state
    loaded = build_authorization_model(cfg, path, "cpu")
    trained = build_model(cfg, 8)
    trained.load_state_dict(state)
    trained.eval()
    images = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(images), trained(images))


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "train_reid.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(data_root, tmp_path):
    out = tmp_path / "nothing"
    missing = _cli("--output", str(out), "--root", str(tmp_path / "no_such_root"), "--no_progress")
    bad_solver = _cli("--output", str(out), "--root", data_root, "SOLVER.OPTIMIZER_NAME", "Adamax")
    bad_lr = _cli("--output", str(out), "--root", data_root, "SOLVER.BASE_LR", "-0.1")
    bad_batch = _cli("--output", str(out), "--root", data_root, "SOLVER.IMS_PER_BATCH", "30")
    for result in (missing, bad_solver, bad_lr, bad_batch):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train_reid.py: error:"), result.stderr
    assert "SOLVER.OPTIMIZER_NAME" in bad_solver.stderr and "SOLVER.BASE_LR" in bad_lr.stderr
    assert not out.exists()


TINY_OPTS = ["MODEL.NAME", TINY, "MODEL.WEIGHT_REGULARIZED_TRIPLET", "on", "INPUT.IMG_SIZE", "[32, 16]",
             "INPUT.PADDING", "2", "SOLVER.IMS_PER_BATCH", "16", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "[100]",
             "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.EVAL_PERIOD", "1"]


def test_a_run_checks_its_settings_once_and_reads_its_resume_point_once(data_root, tmp_path, monkeypatch):
    checks, reads = [], []

    def counting_check(cfg, flag_of_key=None):
        checks.append(cfg.SOLVER.MAX_EPOCHS)
        return original_check(cfg, flag_of_key)

    def counting_read(path, elsewhere="another --output"):
        reads.append(os.path.basename(path))
        return original_read(path, elsewhere)

    original_check, original_read = reid_settings.validate_train_config, resume.read_resume_point
    monkeypatch.setattr(reid_settings, "validate_train_config", counting_check)
    monkeypatch.setattr(reid_trainer, "validate_train_config", counting_check)
    monkeypatch.setattr(resume, "read_resume_point", counting_read)
    argv = ["--root", data_root, "--output", str(tmp_path / "once"), "--device", "cpu", "--num_workers", "0",
            "--no_progress"]
    assert train_reid.main([*argv, "--max_epochs", "1", *TINY_OPTS]) == 0
    assert (checks, reads) == ([1], [])
    assert train_reid.main([*argv, "--max_epochs", "2", *TINY_OPTS]) == 0  # resumes after epoch 1
    assert (checks, reads) == ([1, 2], ["training_checkpoint_1.pt"])
    assert [row["epoch"] for row in reid_trainer.results_json(str(tmp_path / "once"))["epochs"]] == [1, 2]


def test_run_sh_train_warns_loudly_without_the_imagenet_file(tmp_path):
    (tmp_path / "data").mkdir()
    env = {**os.environ, "VENV": str(fake_venv(tmp_path)), "CKPT_DIR": str(tmp_path / "ckpt"),
           "DATA_ROOT": str(tmp_path / "data"), "OUTPUT_ROOT": str(tmp_path / "log"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", os.path.join(REPO, "run.sh"), "train_market1501"], capture_output=True,
                            text=True, env=env, check=False)
    lines = result.stderr.splitlines()
    start = lines.index("#" * 80)
    warning = lines[start:start + 7]
    assert warning[-1] == "#" * 80 and len(warning) == 7, result.stderr
    assert warning[1] == f"run.sh: WARNING: ImageNet weights not found: {tmp_path / 'ckpt' / 'resnet50-19c8e357.pth'}"
    assert "RANDOM weights" in warning[2] and "IMAGENET_WEIGHTS" in warning[4]
    assert result.returncode == 2 and "warning" not in result.stdout.lower()  # then the missing data set stops it
