import os
import pickle

import numpy as np
import pytest
import torch

from data.npy_pairs import (PairDataset, SavedBatches, SavedBatchOrder, find_pairs,
                            reference_file_order, resolve_npy_dir)


def write_split(npy_dir, split, num_batches, batch_size=2, shape=(3, 8, 4)):
    """Batch i holds values i*1000 + image offset (clean) and the negation (protected)."""
    os.makedirs(npy_dir, exist_ok=True)
    for index in range(num_batches):
        clean = np.stack([np.full(shape, index * 1000 + k, dtype=np.float32)
                          for k in range(batch_size)])
        np.save(os.path.join(npy_dir, f"clean-{split}-{index}-images.npy"), clean)
        np.save(os.path.join(npy_dir, f"encry-{split}-{index}-images.npy"), -clean)
        np.save(os.path.join(npy_dir, f"{split}-{index}-ids.npy"), np.arange(batch_size))


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
    with pytest.raises(FileNotFoundError) as err:
        resolve_npy_dir(str(tmp_path))
    assert str(tmp_path / "img_npy") in str(err.value) and f"nor {tmp_path} " in str(err.value)


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
    os.remove(run_dir / "img_npy" / "encry-train-3-images.npy")
    with pytest.raises(ValueError, match="missing partner: .*clean-train-3-images.npy has no "
                                         ".*encry-train-3-images.npy"):
        find_pairs(str(run_dir / "img_npy"), "train")


def test_missing_ids(run_dir):
    os.remove(run_dir / "img_npy" / "test-1-ids.npy")
    with pytest.raises(ValueError, match="missing ids file .*test-1-ids.npy"):
        find_pairs(str(run_dir / "img_npy"), "test")


def test_shape_mismatch_names_both_files(run_dir):
    np.save(run_dir / "img_npy" / "encry-test-1-images.npy", np.zeros((2, 3, 8, 5), np.float32))
    with pytest.raises(ValueError, match=r"shape mismatch in batch 1: .*clean-test-1-images.npy "
                                         r"is \(2, 3, 8, 4\) but .*encry-test-1-images.npy"):
        find_pairs(str(run_dir / "img_npy"), "test")


def test_ids_length_mismatch(run_dir):
    np.save(run_dir / "img_npy" / "train-5-ids.npy", np.arange(3))
    with pytest.raises(ValueError, match=r"train-5-ids.npy holds \(3,\) ids but .*clean-train-5"):
        find_pairs(str(run_dir / "img_npy"), "train")


def test_empty_split_and_unknown_split(tmp_path):
    write_split(str(tmp_path), "train", 1)
    with pytest.raises(ValueError, match=f"no 'test' pairs in {tmp_path}"):
        find_pairs(str(tmp_path), "test")
    with pytest.raises(ValueError, match="split must be one of"):
        find_pairs(str(tmp_path), "query")


def test_images_of_different_sizes_across_batches(tmp_path):
    write_split(str(tmp_path), "train", 2)
    np.save(tmp_path / "clean-train-1-images.npy", np.zeros((2, 3, 8, 6), np.float32))
    np.save(tmp_path / "encry-train-1-images.npy", np.zeros((2, 3, 8, 6), np.float32))
    with pytest.raises(ValueError, match=r"clean-train-1-images.npy holds images of shape "
                                         r"\(3, 8, 6\)"):
        PairDataset(str(tmp_path), "train")


def test_dataset_indexes_images_and_batches(run_dir):
    dataset = PairDataset(str(run_dir / "img_npy"), "train")
    assert len(dataset) == 24 and dataset.num_batches == 12 and dataset.image_shape == (3, 8, 4)
    protected, clean = dataset[21]
    assert clean.dtype == torch.float32 and clean.shape == (3, 8, 4)
    assert clean[0, 0, 0].item() == 10 * 1000 + 1 and protected[0, 0, 0].item() == -10001
    batch_protected, batch_clean = SavedBatches(dataset)[3]
    assert batch_clean.shape == (2, 3, 8, 4) and batch_clean[:, 0, 0, 0].tolist() == [3000, 3001]
    assert torch.equal(batch_protected, -batch_clean)
    with pytest.raises(IndexError):
        dataset[24]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays is None and torch.equal(clone[21][1], clean)


def test_saved_batch_order():
    order = SavedBatchOrder(12, shuffle=True, seed=5)
    order.set_epoch(1)
    first = list(order)
    assert sorted(first) == list(range(12)) and list(order) == first
    order.set_epoch(2)
    assert list(order) != first
    again = SavedBatchOrder(12, shuffle=True, seed=5)
    again.set_epoch(1)
    assert list(again) == first
    assert list(SavedBatchOrder(4, shuffle=False, seed=5)) == [0, 1, 2, 3]
