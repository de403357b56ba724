"""Sharding and gathering for multi-process protection with ``ignite.distributed``.

Distributed samplers shuffle and pad a split by repeating samples, which corrupts a query/gallery
evaluation. Protection therefore splits the list of batches into contiguous,
unpadded shards, each rank keeps the global index of every image, and rank 0 orders the gathered
rows by that index.
"""
import ignite.distributed as idist
import torch


def batch_spans(num_items, batch_size):
    """``(start, stop)`` of every batch of a split: batch ``i`` holds items ``i*B .. i*B+B-1``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return [(start, min(start + batch_size, num_items)) for start in range(0, num_items, batch_size)]


def shard_range(num_batches, world_size, rank):
    """The contiguous range of batch indices that ``rank`` of ``world_size`` protects.

    The first ``num_batches % world_size`` ranks take one batch more; nothing is repeated.
    """
    base, extra = divmod(num_batches, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return range(start, stop)


def gather_rows_by_index(indices, rows, num_items):
    """Gather every rank's ``rows`` (one per image, any trailing shape) on all ranks, ordered by index.

    ``indices`` (LongTensor [n]) are global image indices of this rank's rows. Returns a tensor of
    ``num_items`` rows; raises if an index is missing or repeated, so a broken shard cannot pass
    silently into the metrics.
    """
    world_size = idist.get_world_size()
    if world_size > 1:
        counts = idist.all_gather(torch.tensor([indices.numel()], device=idist.device()))
        counts = [int(count) for count in counts.cpu()]
        row_shape = list(rows.shape[1:])
        device = idist.device()
        gathered_idx = idist.all_gather_tensors_with_shapes(
            indices.to(device), [[count] for count in counts]
        )
        gathered_rows = idist.all_gather_tensors_with_shapes(
            rows.to(device), [[count] + row_shape for count in counts]
        )
        indices = torch.cat([t.cpu() for t in gathered_idx])
        rows = torch.cat([t.cpu() for t in gathered_rows])
    if indices.numel() != num_items or not torch.equal(
        torch.sort(indices).values, torch.arange(num_items)
    ):
        raise RuntimeError(
            f"gathered {indices.numel()} rows for {num_items} images: "
            "some image is missing or was protected twice"
        )
    ordered = torch.empty_like(rows)
    ordered[indices] = rows
    return ordered
