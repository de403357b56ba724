"""The attack's view of the saved pairs: both splits opened and checked once, the train split's validation part."""
from data.npy_pairs import PairDataset, SavedBatches, identity_rows, split_by_identity
from evaluation.image_quality import SSIM_KERNEL_SIZE
from utils.errors import DatasetError


def open_attack_pairs(npy_dir, settings, reference_order=False):
    """(train, test) PairDatasets, checked for what the attack needs, before anything is written.

    Every file of both splits must hold finite C x H x W images of one shape, with C the number
    of INPUT.PIXEL_MEAN values and H, W at least SSIM's window; ``DatasetError`` or
    ``NonFiniteError`` names the first file that does not.
    """
    train = PairDataset(npy_dir, "train", reference_order=reference_order, check_values=False)
    channels, height, width = train.image_shape
    first = train.batch_files(0)[0]
    if channels != len(settings.pixel_mean):
        raise DatasetError(f"{first} holds images with {channels} channels; expected "
                           f"{len(settings.pixel_mean)} (one per INPUT.PIXEL_MEAN value)")
    if min(height, width) < SSIM_KERNEL_SIZE:
        raise DatasetError(f"{first} holds {height} x {width} images; expected at least "
                           f"{SSIM_KERNEL_SIZE} x {SSIM_KERNEL_SIZE} pixels (SSIM's window)")
    test = PairDataset(npy_dir, "test", reference_order=reference_order,
                       image_shape=train.image_shape, check_values=False)
    train.check_values()
    test.check_values()
    return train, test


def train_and_validation(train_pairs, settings):
    """(train batches, validation batches or None, held-out identities) of the train split.

    With ATTACK.VAL_FRACTION > 0, that share of the train identities (seeded by ATTACK.SEED) is
    held out: their images form the validation part, the others the training part.
    """
    if settings.val_fraction <= 0:
        return SavedBatches(train_pairs), None, []
    pids = [pid for position in range(train_pairs.num_batches) for pid in train_pairs.load_labels(position)[0]]
    held_out = split_by_identity(pids, settings.val_fraction, settings.seed)
    train_rows, validation_rows = identity_rows(train_pairs, held_out)
    return SavedBatches(train_pairs, train_rows), SavedBatches(train_pairs, validation_rows), held_out
