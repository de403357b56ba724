"""Cross-modality PK batches: P identities x K visible + K thermal images, as the AGW VI code samples.

The reference (mangye16/Cross-Modal-Re-ID-baseline, ``utils.IdentitySampler``) builds an epoch of
``int(N / (P * K)) + 1`` batches, N being the larger of the two modalities' image counts; each batch
draws P distinct identities, then for each of them K visible and K thermal images independently and
WITH replacement (an identity with two thermal images still gives K). Position i of the visible half
and position i of the thermal half belong to the same identity, identity-major, so the triplet on
the concatenated batch sees every identity K times in each modality.

The reference draws from numpy's global generator, seeded once per run; here every epoch draws from
a ``torch.Generator`` seeded from (seed, epoch), so a resumed run repeats the same batches.
"""
import torch


def epoch_generator(seed, epoch):
    """A torch.Generator for one epoch, independent of any global random state."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))


def _positions(pids):
    """{pid: [index, ...]} in record order."""
    positions = {}
    for index, pid in enumerate(pids):
        positions.setdefault(int(pid), []).append(index)
    return positions


class CrossModalityBatchSampler:
    """Batches of ``(visible_index, thermal_index)`` pairs; see the module docstring.

    ``visible_pids`` / ``thermal_pids``: the label of each visible / thermal training record. Every
    identity must have images in both modalities, and there must be at least ``ids_per_batch`` of them.
    """

    def __init__(self, visible_pids, thermal_pids, ids_per_batch, num_pos, seed=0):
        if ids_per_batch < 1 or num_pos < 1:
            raise ValueError(f"ids_per_batch and num_pos must be >= 1, got {ids_per_batch} and {num_pos}")
        self.visible = _positions(visible_pids)
        self.thermal = _positions(thermal_pids)
        one_sided = sorted(set(self.visible) ^ set(self.thermal))
        if one_sided:
            raise ValueError(
                f"identity {one_sided[0]} has images in one modality only ({len(one_sided)} such); "
                "every training identity needs visible and thermal images"
            )
        self.identities = sorted(self.visible)
        if len(self.identities) < ids_per_batch:
            raise ValueError(f"{len(self.identities)} identities, fewer than the {ids_per_batch} of one batch")
        self.ids_per_batch = int(ids_per_batch)
        self.num_pos = int(num_pos)
        self.seed = int(seed)
        self.epoch = 0
        self.num_images = max(len(visible_pids), len(thermal_pids))

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_images // (self.ids_per_batch * self.num_pos) + 1

    def _draw(self, indices, generator):
        picks = torch.randint(len(indices), (self.num_pos,), generator=generator).tolist()
        return [indices[i] for i in picks]

    def batches(self):
        """This epoch's batches: lists of P * K (visible, thermal) index pairs, identity-major."""
        generator = epoch_generator(self.seed, self.epoch)
        epoch = []
        for _ in range(len(self)):
            order = torch.randperm(len(self.identities), generator=generator)[: self.ids_per_batch].tolist()
            batch = []
            for pid in (self.identities[i] for i in order):
                visible = self._draw(self.visible[pid], generator)
                thermal = self._draw(self.thermal[pid], generator)
                batch.extend(zip(visible, thermal))
            epoch.append(batch)
        return epoch

    def __iter__(self):
        return iter(self.batches())
