import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN as MEAN
from helpers import IMAGENET_STD as STD
from helpers import write_image
from PIL import Image

from configs import get_default_config
from data import (
    DatasetError,
    ImageDataset,
    ImageRecord,
    ReIDDataset,
    build_eval_transform,
    build_loader,
    build_train_transform,
    denormalize,
    eval_records,
    normalize,
    read_image,
)


@pytest.fixture
def cfg():
    config = get_default_config()
    config.INPUT.IMG_SIZE = [32, 16]
    config.INPUT.PADDING = 2
    return config


@pytest.fixture
def records(tmp_path):
    result = []
    for index in range(5):
        path = tmp_path / f"{index:04d}_c{index % 2 + 1}s1_000001_01.png"
        write_image(path, (index * 40, 128, 255), size=(8, 16))
        result.append(ImageRecord(str(path), pid=index, camid=index % 2))
    return result


def test_read_image_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match="cannot read image .*corrupt.jpg"):
        read_image(corrupt)
    with pytest.raises(DatasetError, match="image file not found: .*absent.png"):
        read_image(tmp_path / "absent.png")
    truncated = tmp_path / "truncated.png"
    write_image(tmp_path / "whole.png", (1, 2, 3), size=(64, 64))
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(DatasetError, match="truncated.png"):
        read_image(truncated)
    gray = tmp_path / "gray.png"
    write_image(gray, 7, size=(4, 4), mode="L")
    assert read_image(gray).mode == "RGB"


def test_items_carry_global_index_also_in_a_shard(records, cfg):
    shard = ImageDataset(records, build_eval_transform(cfg), indices=range(2, 5))
    assert len(shard) == 3
    item = shard[1]
    assert item["index"] == 3 and item["pid"] == 3 and item["camid"] == 1
    assert item["path"] == records[3].path
    assert item["image"].shape == (3, 32, 16)
    with pytest.raises(IndexError, match="outside the 5 records"):
        ImageDataset(records, build_eval_transform(cfg), indices=[0, 5])


def test_loader_is_sequential_unpadded_and_collated(records, cfg):
    loader = build_loader(records, build_eval_transform(cfg), batch_size=2, indices=[1, 2, 3, 4, 0])
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[1, 2], [3, 4], [0]]
    assert batches[0]["image"].shape == (2, 3, 32, 16)
    assert batches[1]["pid"].tolist() == [3, 4] and batches[1]["camid"].tolist() == [1, 0]
    assert batches[2]["path"] == [records[0].path]
    full = list(build_loader(records, build_eval_transform(cfg), batch_size=4))
    assert torch.cat([b["index"] for b in full]).tolist() == [0, 1, 2, 3, 4]


def test_eval_records_puts_query_first():
    query = [ImageRecord("q0", 1, 0), ImageRecord("q1", 2, 1)]
    gallery = [ImageRecord("g0", 1, 1), ImageRecord("g1", 0, 0), ImageRecord("g2", 2, 0)]
    dataset = ReIDDataset("toy", "/toy", "./", [], query, gallery)
    combined, num_query = eval_records(dataset)
    assert num_query == 2 and [r.path for r in combined] == ["q0", "q1", "g0", "g1", "g2"]


def test_eval_transform_resizes_and_normalizes(records, cfg):
    tensor = build_eval_transform(cfg)(read_image(records[1].path))
    assert type(tensor) is torch.Tensor and tensor.dtype == torch.float32
    expected = (torch.tensor([40, 128, 255]) / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(tensor[:, 10, 5], expected, atol=1e-5)


def test_train_transform_shape_flip_and_erasing(cfg):
    left_half_red = np.zeros((32, 16, 3), dtype=np.uint8)
    left_half_red[:, :8, 0] = 255
    image = Image.fromarray(left_half_red)
    cfg.INPUT.PROB, cfg.INPUT.RE_PROB, cfg.INPUT.PADDING = 1.0, 0.0, 0
    flipped = build_train_transform(cfg)(image)
    assert type(flipped) is torch.Tensor and flipped.shape == (3, 32, 16)
    red = (1.0 - MEAN[0]) / STD[0]
    assert flipped[0, :, 12].allclose(torch.full((32,), red)) and flipped[0, :, 3].max() < 0
    cfg.INPUT.PROB, cfg.INPUT.RE_PROB = 0.0, 1.0
    torch.manual_seed(0)
    erased = build_train_transform(cfg)(image)
    # The reference's RandomErasing writes the raw 0.485/0.456/0.406 after normalisation.
    fill = torch.tensor([0.485, 0.456, 0.406]).view(3, 1)
    boxed = (erased.flatten(1) == fill).all(dim=0)
    assert boxed.sum() >= 0.02 * 32 * 16


def test_normalize_round_trip_keeps_device_and_dtype():
    pixels = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    images = normalize(pixels, MEAN, STD)
    assert images.dtype == torch.float64
    assert torch.allclose(images[1, 2], (pixels[1, 2] - MEAN[2]) / STD[2])
    assert torch.allclose(denormalize(images, MEAN, STD), pixels)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        normalize(torch.rand(2, 4, 4, 4), MEAN, STD)


def test_identity_batch_sampler_feeds_a_loader_pk_batches(tmp_path, cfg):
    from torch.utils.data import DataLoader

    from data.samplers import IdentityBatchSampler

    records = []
    for pid, count in enumerate([3, 2, 5, 1]):
        for shot in range(count):
            path = tmp_path / f"{pid:04d}_c1s1_{shot:06d}_01.png"
            write_image(path, (pid * 60, shot * 40, 0), size=(8, 16))
            records.append(ImageRecord(str(path), pid=pid, camid=0))
    sampler = IdentityBatchSampler([r.pid for r in records], ids_per_batch=2, num_instances=2, seed=7)
    loader = DataLoader(ImageDataset(records, build_eval_transform(cfg)), batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler) >= 2
    for batch in batches:
        assert batch["image"].shape == (4, 3, 32, 16)
        pids = batch["pid"].tolist()
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
        assert [records[i].pid for i in batch["index"].tolist()] == pids
    again = DataLoader(ImageDataset(records, build_eval_transform(cfg)), batch_sampler=sampler)
    assert [b["index"].tolist() for b in again] == [b["index"].tolist() for b in batches]
