"""The img_npy format (data.img_npy: names, writing, finding, checking, reading) and the attack's
Dataset over it (data.npy_pairs)."""
import os
import pickle

import numpy as np
import pytest
import torch

from data.img_npy import (
    NPY_DIRNAME,
    BatchFiles,
    batch_files,
    check_finite,
    find_pairs,
    npy_dir_of,
    read_batch,
    reference_file_order,
    resolve_npy_dir,
    run_dir_of,
    write_batch,
)
from data.npy_pairs import PairDataset, SavedBatches, SavedBatchOrder, split_by_identity
from engine.protect.run_store import RunStore
from utils.errors import DatasetError, NonFiniteError, OutputError


def write_split(npy_dir, split, num_batches, batch_size=2, shape=(3, 8, 4)):
    """Batch i holds values i*1000 + image offset (clean) and the negation (protected)."""
    for index in range(num_batches):
        clean = np.stack([np.full(shape, index * 1000 + k, dtype=np.float32)
                          for k in range(batch_size)])
        write_batch(npy_dir, split, index, clean, -clean, np.arange(batch_size),
                    np.zeros(batch_size))


@pytest.fixture
def run_dir(tmp_path):
    write_split(str(tmp_path / "img_npy"), "train", 12)
    write_split(str(tmp_path / "img_npy"), "test", 2)
    return tmp_path


def test_resolve_accepts_run_folder_and_npy_folder(run_dir):
    npy_dir = str(run_dir / "img_npy")
    assert resolve_npy_dir(str(run_dir)) == npy_dir
    assert resolve_npy_dir(npy_dir) == npy_dir


def test_resolve_error_names_both_paths(tmp_path):
    with pytest.raises(DatasetError) as err:
        resolve_npy_dir(str(tmp_path))
    assert str(err.value) == (
        f"no saved image pairs found: neither {tmp_path / 'img_npy'} nor {tmp_path} holds "
        "clean-/encry-<split>-<i>-images.npy files (run protect_image.py with --save_image_npy "
        "first)")


def test_numeric_and_reference_orders(run_dir):
    npy_dir = str(run_dir / "img_npy")
    pairs = find_pairs(npy_dir, "train")
    assert [index for index, *_ in pairs] == list(range(12))
    index, clean, protected, ids = pairs[10]
    assert (index, os.path.basename(clean), os.path.basename(protected),
            os.path.basename(ids)) == (10, "clean-train-10-images.npy",
                                       "encry-train-10-images.npy", "train-10-ids.npy")
    reference = [index for index, *_ in reference_file_order(npy_dir, "train")]
    assert reference == [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert PairDataset(npy_dir, "train", reference_order=True).batch_indices == reference


def test_missing_partner(run_dir):
    os.remove(batch_files(str(run_dir / "img_npy"), "train", 3).protected)
    with pytest.raises(DatasetError, match="missing partner: .*clean-train-3-images.npy has no "
                                           ".*encry-train-3-images.npy"):
        find_pairs(str(run_dir / "img_npy"), "train")


def test_missing_ids(run_dir):
    os.remove(batch_files(str(run_dir / "img_npy"), "test", 1).ids)
    with pytest.raises(DatasetError, match="missing ids file .*test-1-ids.npy for "
                                           ".*clean-test-1-images.npy"):
        find_pairs(str(run_dir / "img_npy"), "test")


def test_shape_mismatch_names_both_files(run_dir):
    np.save(batch_files(str(run_dir / "img_npy"), "test", 1).protected,
            np.zeros((2, 3, 8, 5), np.float32))
    with pytest.raises(DatasetError, match=r"shape mismatch in batch 1: .*clean-test-1-images.npy "
                                           r"is \(2, 3, 8, 4\) but .*encry-test-1-images.npy is "
                                           r"\(2, 3, 8, 5\); expected equal shapes"):
        find_pairs(str(run_dir / "img_npy"), "test")


def test_ids_length_mismatch(run_dir):
    np.save(batch_files(str(run_dir / "img_npy"), "train", 5).ids, np.arange(3))
    with pytest.raises(DatasetError, match=r"train-5-ids.npy holds \(3,\) ids but .*clean-train-5"
                                           r"-images.npy holds 2 images; expected one id per"):
        find_pairs(str(run_dir / "img_npy"), "train")


def test_empty_split_and_unknown_split(tmp_path):
    write_split(str(tmp_path), "train", 1)
    with pytest.raises(DatasetError, match=f"no 'test' pairs in {tmp_path}"):
        find_pairs(str(tmp_path), "test")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'query'"):
        find_pairs(str(tmp_path), "query")


def test_images_of_different_sizes_across_batches(tmp_path):
    write_split(str(tmp_path), "train", 2)
    wider = np.zeros((2, 3, 8, 6), np.float32)
    write_batch(str(tmp_path), "train", 1, wider, wider, np.arange(2))
    with pytest.raises(DatasetError, match=r"clean-train-1-images.npy and .*encry-train-1-images"
                                           r".npy hold images of shape \(3, 8, 6\); expected "
                                           r"C x H x W = \(3, 8, 4\) \(the shape of "
                                           r".*clean-train-0-images.npy\)"):
        PairDataset(str(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"clean-train-0-images.npy and .*encry-train-0-images"
                                           r".npy hold images of shape \(3, 8, 4\); expected "
                                           r"C x H x W = \(3, 8, 6\) \(the shape of the train "
                                           r"split\)"):
        PairDataset(str(tmp_path), "train", image_shape=(3, 8, 6))


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 8, 4), np.float32), r"expected a B x C x H x W array of images, got shape "
                                      r"\(2, 8, 4\)"),
    (np.zeros((0, 3, 8, 4), np.float32), r"expected at least one image, got shape "
                                         r"\(0, 3, 8, 4\)"),
    (np.zeros((2, 3, 8, 4), np.complex64), "expected float32 images, got dtype complex64"),
])
def test_unusable_image_files(tmp_path, array, message):
    write_split(str(tmp_path), "train", 1)
    np.save(batch_files(str(tmp_path), "train", 0).protected, array)
    with pytest.raises(DatasetError, match=f"encry-train-0-images.npy: {message}"):
        find_pairs(str(tmp_path), "train")


def test_truncated_file_is_named(tmp_path):
    write_split(str(tmp_path), "train", 1)
    path = batch_files(str(tmp_path), "train", 0).clean
    with open(path, "rb") as handle:
        head = handle.read(100)
    with open(path, "wb") as handle:
        handle.write(head)
    with pytest.raises(DatasetError, match=f"cannot read {path} as a .npy array: "):
        find_pairs(str(tmp_path), "train")


@pytest.mark.parametrize("block", [1, 7, 1 << 24])
@pytest.mark.parametrize("image, value", [(0, np.nan), (4, np.inf), (5, -np.inf)])
def test_check_finite_names_the_file_and_first_image(tmp_path, block, image, value):
    array = np.zeros((6, 3, 4, 2), np.float32)
    array[image, 1, 2, 1] = value
    array[5, 0, 0, 0] = np.nan  # a later one is not the one reported
    path = str(tmp_path / "encry-train-0-images.npy")
    np.save(path, array)
    with pytest.raises(NonFiniteError, match=rf"^{path} holds NaN or infinite values \(first in "
                                             rf"image {image} of the batch\); expected finite"):
        check_finite(path, block=block)
    np.save(path, np.zeros((6, 3, 4, 2), np.float32))
    assert check_finite(path, block=block) is None


def test_dataset_checks_values_on_opening_only_when_asked(run_dir):
    npy_dir = run_dir / "img_npy"
    path = batch_files(str(npy_dir), "train", 7).clean
    clean = np.load(path)
    clean[1, 0, 3, 2] = np.inf
    np.save(path, clean)
    with pytest.raises(NonFiniteError, match=r"clean-train-7-images.npy holds NaN or infinite "
                                             r"values \(first in image 1 of the batch\)"):
        PairDataset(str(npy_dir), "train")
    unchecked = PairDataset(str(npy_dir), "train", check_values=False)
    assert unchecked.num_batches == 12
    with pytest.raises(NonFiniteError, match="clean-train-7-images.npy"):
        unchecked.check_values()


def test_dataset_indexes_images_and_batches(run_dir):
    dataset = PairDataset(str(run_dir / "img_npy"), "train")
    assert len(dataset) == 24 and dataset.num_batches == 12 and dataset.image_shape == (3, 8, 4)
    protected, clean = dataset[21]
    assert clean.dtype == torch.float32 and clean.shape == (3, 8, 4)
    assert clean[0, 0, 0].item() == 10 * 1000 + 1 and protected[0, 0, 0].item() == -10001
    batch_protected, batch_clean, batch_modalities = SavedBatches(dataset)[3]
    assert batch_clean.shape == (2, 3, 8, 4) and batch_clean[:, 0, 0, 0].tolist() == [3000, 3001]
    assert torch.equal(batch_protected, -batch_clean) and batch_modalities is None
    with pytest.raises(IndexError, match="image 24 out of range for 24 'train' images"):
        dataset[24]
    assert dataset.batch_files(3) == batch_files(str(run_dir / "img_npy"), "train", 3)[:2]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays is None and torch.equal(clone[21][1], clean)


def test_saved_batch_order():
    order = SavedBatchOrder(12, shuffle=True, seed=5)
    order.set_epoch(1)
    first = list(order)
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(5 * 1_000_003 + 1))
    assert first == expected.tolist() and list(order) == first
    order.set_epoch(2)
    assert list(order) == torch.randperm(
        12, generator=torch.Generator().manual_seed(5 * 1_000_003 + 2)).tolist()
    again = SavedBatchOrder(12, shuffle=True, seed=5)
    again.set_epoch(1)
    assert list(again) == first
    assert list(SavedBatchOrder(4, shuffle=False, seed=5)) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# the format's names, writer and reader (data.img_npy)
# ---------------------------------------------------------------------------------------------
def test_file_names_are_the_reference_layout(tmp_path):
    """The names the reference's attack script reads (README, "protect_image.py" outputs)."""
    npy_dir = npy_dir_of(str(tmp_path))
    assert npy_dir == str(tmp_path / "img_npy") and NPY_DIRNAME == "img_npy"
    assert batch_files(npy_dir, "test", 4) == BatchFiles(
        os.path.join(npy_dir, "clean-test-4-images.npy"),
        os.path.join(npy_dir, "encry-test-4-images.npy"),
        os.path.join(npy_dir, "test-4-ids.npy"), os.path.join(npy_dir, "test-4-camids.npy"),
        os.path.join(npy_dir, "test-4-modality.npy"))
    assert batch_files(npy_dir, "train", 10) == BatchFiles(
        os.path.join(npy_dir, "clean-train-10-images.npy"),
        os.path.join(npy_dir, "encry-train-10-images.npy"),
        os.path.join(npy_dir, "train-10-ids.npy"), None, os.path.join(npy_dir, "train-10-modality.npy"))
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'query'"):
        batch_files(npy_dir, "query", 0)
    assert run_dir_of(npy_dir) == str(tmp_path) and run_dir_of(str(tmp_path)) == str(tmp_path)


def test_write_batch_writes_float32_images_and_labels_that_read_back(tmp_path):
    npy_dir = str(tmp_path / "img_npy")
    original = torch.randn(3, 3, 8, 4, dtype=torch.float64).to(memory_format=torch.channels_last)
    protected = original.half()
    pids, camids = torch.tensor([7, 7, 9]), np.array([1, 2, 1])
    files = write_batch(npy_dir, "test", 2, original, protected, pids, camids)
    assert files.modality is None
    assert sorted(os.listdir(npy_dir)) == sorted(os.path.basename(path) for path in files if path)
    batch = read_batch(npy_dir, "test", 2)
    assert batch.clean.dtype == np.float32 and batch.protected.dtype == np.float32
    assert np.array_equal(batch.clean, original.float().numpy())
    assert np.array_equal(batch.protected, protected.float().numpy())
    assert batch.ids.tolist() == [7, 7, 9] and batch.camids.tolist() == [1, 2, 1]
    assert [pair.index for pair in find_pairs(npy_dir, "test")] == [2]

    write_batch(npy_dir, "train", 0, original.numpy(), original.numpy(), [1, 2, 3], camids)
    train = read_batch(npy_dir, "train", 0)
    assert train.camids is None and not os.path.exists(os.path.join(npy_dir,
                                                                     "train-0-camids.npy"))
    with pytest.raises(ValueError, match="the 'test' split's batches need camera ids"):
        write_batch(npy_dir, "test", 3, original, protected, pids)


def test_write_batch_failure_is_one_output_error_and_leaves_no_file(tmp_path):
    (tmp_path / "img_npy").write_text("a file where the folder goes")
    images = np.zeros((1, 3, 8, 4), np.float32)
    with pytest.raises(OutputError, match="cannot write .*img_npy"):
        write_batch(str(tmp_path / "img_npy"), "train", 0, images, images, [0])


def test_read_batch_names_an_unreadable_file(tmp_path):
    write_split(str(tmp_path), "test", 1)
    os.remove(batch_files(str(tmp_path), "test", 0).camids)
    with pytest.raises(DatasetError, match="cannot read .*test-0-camids.npy as a .npy array"):
        read_batch(str(tmp_path), "test", 0)


def test_run_store_save_pairs_writes_through_the_format_module(tmp_path):
    """protect_image.py's PairWriter calls RunStore.save_pairs; recovery_attack.py reads them."""
    original = torch.rand(2, 3, 16, 8)
    store = RunStore(str(tmp_path))
    store.save_pairs("test", 0, original, -original, torch.tensor([3, 4]), torch.tensor([1, 2]))
    store.save_pairs("train", 0, original, original * 2, torch.tensor([5, 6]), torch.tensor([0, 0]))
    npy_dir = resolve_npy_dir(str(tmp_path))
    assert npy_dir == npy_dir_of(str(tmp_path))
    test = read_batch(npy_dir, "test", 0)
    assert np.array_equal(test.protected, -original.numpy()) and test.camids.tolist() == [1, 2]
    assert read_batch(npy_dir, "train", 0).camids is None
    assert PairDataset(npy_dir, "train").image_shape == (3, 16, 8)


def test_held_out_identity_count_is_rounded_not_truncated():
    assert len(split_by_identity(range(19), 0.1, seed=0)) == 2  # 1.9 -> 2
    assert len(split_by_identity(range(9), 0.3, seed=0)) == 3  # 2.7 -> 3
    assert len(split_by_identity(range(10), 0.01, seed=0)) == 1  # at least one
    assert split_by_identity(range(10), 0.0, seed=0) == []
