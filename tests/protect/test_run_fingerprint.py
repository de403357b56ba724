"""The run fingerprint: every setting that changes a finished batch is in it, key by key."""
import pytest

from configs import load_config
from engine.protect.run import run_fingerprint
from engine.protect.run_store import RunStore
from utils.errors import RunConflictError

# Written out here, not taken from the code: each of these changes what a finished batch holds.
RESULT_AFFECTING = {
    "PIXELFADE.METHOD": "blur", "PIXELFADE.MODE": "per_image", "PIXELFADE.BATCH_SIZE": 8,
    "PIXELFADE.MAX_ITER": 50, "PIXELFADE.FADE_NUM_ITER": 4, "PIXELFADE.WARMUP_ITER": 2,
    "PIXELFADE.MOMENTUM": 0.5, "PIXELFADE.BETA": 0.02, "PIXELFADE.BETA_TEMP": 0.02,
    "PIXELFADE.EPSILON": 0.05, "PIXELFADE.TAIL_ITERS": 3, "PIXELFADE.SEED": 1,
    "PIXELFADE.PRECISION": "bf16", "PIXELFADE.CHANNELS_LAST": True, "PIXELFADE.BLUR_SIGMA": 3.0,
    "PIXELFADE.MOSAIC_BLOCK": 8, "PIXELFADE.NOISE_STD": 0.5, "PIXELFADE.SAVE_IMAGE_NPY": True,
    "PIXELFADE.SAVE_PNG": True, "PIXELFADE.TRAIN_ORDER": "every_image", "MODEL.NAME": "resnet50",
    "MODEL.LAST_STRIDE": 2, "MODEL.GENERALIZED_MEAN_POOL": "off", "INPUT.IMG_SIZE": [128, 64],
    "INPUT.PIXEL_MEAN": [0.5, 0.5, 0.5], "INPUT.PIXEL_STD": [0.5, 0.5, 0.5], "INPUT.PROB": 0.25,
    "DATALOADER.NUM_INSTANCE": 2, "DATASETS.NAMES": "cuhk03", "DATASETS.CUHK03_LABELED": True,
}


def changed(key, value):
    return load_config("", [key, repr(value) if isinstance(value, str) else str(value)])


@pytest.mark.parametrize("key", sorted(RESULT_AFFECTING))
def test_each_result_affecting_key_makes_the_folder_refused(key, tmp_path):
    store = RunStore(str(tmp_path))
    store.open_run(run_fingerprint(load_config(), "ckpt sha256=1"))
    new = run_fingerprint(changed(key, RESULT_AFFECTING[key]), "ckpt sha256=1")
    with pytest.raises(RunConflictError, match=f"{key}: "):
        store.open_run(new)


def test_the_checkpoint_is_part_of_the_fingerprint(tmp_path):
    store = RunStore(str(tmp_path))
    store.open_run(run_fingerprint(load_config(), "a.pth sha256=1"))
    with pytest.raises(RunConflictError, match="checkpoint: 'a.pth sha256=1' there, 'a.pth sha256=2' now"):
        store.open_run(run_fingerprint(load_config(), "a.pth sha256=2"))


def test_scoring_and_execution_settings_do_not_refuse_a_resume(tmp_path):
    store = RunStore(str(tmp_path))
    store.open_run(run_fingerprint(load_config(), "c"))
    for key, value in {"TEST.DISTANCE": "cosine", "TEST.RE_RANKING": "on", "PIXELFADE.NUM_GRIDS": 0,
                       "DATALOADER.NUM_WORKERS": 0, "DATASETS.ROOT_DIR": "/elsewhere", "OUTPUT_DIR": "x"}.items():
        assert store.open_run(run_fingerprint(changed(key, value), "c")) is False, key
