"""Epoch time of the ignite attack trainer vs the reference loop, on the same generated pairs.

The reference loop reads both .npy files of a batch with np.load at every step; the trainer maps
each file once and feeds whole saved batches through a DataLoader. Both train the same generator
(same seed) with Adam and L1 at reference settings (unet_128, 256x128, batch 20). Defaults are
small so the run takes a couple of minutes on a 2-core CPU; prints a Markdown table, and the
one-off cost of opening the pairs (shape checks and the NaN/infinity scan of every file).

    python benchmarks/bench_attack_epoch.py [--num_files 4] [--epochs 1] [--ngf 64] [--device auto]
"""
import argparse
import os
import tempfile
import time

import numpy as np
import torch

from data.img_npy import find_pairs, read_batch, reference_file_order, write_batch
from data.npy_pairs import PairDataset, SavedBatchOrder
from engine.attack.run import create_attack_trainer, make_batch_loader
from engine.attack.settings import AttackSettings, build_optimizer
from ignite.engine import Events
from modeling.generators import build_generator

LOG_EVERY = 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_files", type=int, default=4, help="saved train batches")
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--generator", default="unet_128")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per method")
    parser.add_argument("--num_workers", type=int, default=0, help="trainer DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser.parse_args(argv)


def write_pairs(npy_dir, num_files, batch_size, height, width):
    rng = np.random.default_rng(0)
    for index in range(num_files):
        clean = rng.standard_normal((batch_size, 3, height, width), dtype=np.float32)
        protected = rng.standard_normal((batch_size, 3, height, width), dtype=np.float32)
        write_batch(npy_dir, "train", index, clean, protected, np.arange(batch_size))


def _clock():
    return time.perf_counter(), time.process_time()


def _elapsed(start):
    """(wall, process CPU) seconds since ``start``; CPU time is steadier on a shared machine."""
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(generator, optimizer, npy_dir, device):
    """One untimed step, so allocator and kernel selection costs stay out of the timings."""
    batch = read_batch(npy_dir, "train", 0)
    protected, clean = torch.from_numpy(batch.protected), torch.from_numpy(batch.clean)
    loss = torch.nn.functional.l1_loss(generator(protected.to(device)), clean.to(device))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    synchronize(device)


def reference_loop_epochs(settings, npy_dir, device, epochs):
    """(wall, CPU) s per epoch of the reference loop: sorted file lists, np.load per step."""
    torch.manual_seed(settings.seed)
    generator = build_generator(settings.generator, ngf=settings.ngf).to(device)
    optimizer = build_optimizer(settings, generator.parameters())
    warm_up(generator, optimizer, npy_dir, device)
    pairs = reference_file_order(npy_dir, "train")  # the reference's sorted file listing
    clean_files = [pair.clean for pair in pairs]
    protected_files = [pair.protected for pair in pairs]
    l1_loss = torch.nn.L1Loss()
    times = []
    for _ in range(epochs):
        start = _clock()
        generator.train()
        for step, (clean_file, protected_file) in enumerate(zip(clean_files, protected_files)):
            clean = torch.from_numpy(np.load(clean_file)).to(device)
            protected = torch.from_numpy(np.load(protected_file)).to(device)
            loss = l1_loss(generator(protected), clean)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % LOG_EVERY == 0:
                loss.item()
        synchronize(device)
        times.append(_elapsed(start))
    return times


def trainer_epochs(settings, npy_dir, device, epochs, num_workers):
    """(wall, CPU) s per epoch of engine.attack.run's ignite trainer over memory-mapped batches."""
    torch.manual_seed(settings.seed)
    generator = build_generator(settings.generator, ngf=settings.ngf).to(device)
    optimizer = build_optimizer(settings, generator.parameters())
    warm_up(generator, optimizer, npy_dir, device)
    pairs = PairDataset(npy_dir, "train")
    order = SavedBatchOrder(pairs.num_batches, shuffle=True, seed=settings.seed)
    loader = make_batch_loader(pairs, order, device, num_workers)
    trainer = create_attack_trainer(generator, optimizer, settings, device)
    times, starts = [], []

    @trainer.on(Events.EPOCH_STARTED)
    def _start(engine):
        order.set_epoch(engine.state.epoch)
        starts.append(_clock())

    @trainer.on(Events.EPOCH_COMPLETED)
    def _stop(engine):
        synchronize(device)
        times.append(_elapsed(starts[-1]))

    trainer.run(loader, max_epochs=epochs)
    return times


def opening_seconds(npy_dir):
    """(s to open the train split with the value scan, s without it, MiB scanned)."""
    start = time.perf_counter()
    PairDataset(npy_dir, "train", check_values=False)
    shapes_only = time.perf_counter() - start
    start = time.perf_counter()
    PairDataset(npy_dir, "train")
    with_scan = time.perf_counter() - start
    mib = sum(os.path.getsize(path) for pair in find_pairs(npy_dir, "train")
              for path in (pair.clean, pair.protected)) / 2 ** 20
    return with_scan, shapes_only, mib


def main(argv=None):
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    settings = AttackSettings(generator=args.generator, ngf=args.ngf)
    images = args.num_files * args.batch_size
    with tempfile.TemporaryDirectory() as npy_dir:
        write_pairs(npy_dir, args.num_files, args.batch_size, args.height, args.width)
        reference = reference_loop_epochs(settings, npy_dir, device, args.epochs)
        trainer = trainer_epochs(settings, npy_dir, device, args.epochs, args.num_workers)
        with_scan, shapes_only, mib = opening_seconds(npy_dir)
    print(f"{args.generator} ngf {args.ngf}, {args.num_files} files x {args.batch_size} images "
          f"{args.height}x{args.width}, Adam, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.epochs} epoch(s)\n")
    print("| method | epoch wall (s) | images/s | epoch CPU (s) | wall vs reference |")
    print("|---|---|---|---|---|")
    reference_wall = float(np.median([wall for wall, _ in reference]))
    for name, epochs in (("reference loop (np.load per step)", reference),
                         ("ignite trainer (mmap, saved batches)", trainer)):
        wall = float(np.median([wall for wall, _ in epochs]))
        cpu = float(np.median([cpu for _, cpu in epochs]))
        print(f"| {name} | {wall:.2f} | {images / wall:.2f} | {cpu:.2f} | "
              f"{reference_wall / wall:.2f}x |")
    print(f"\nOpening the train split ({mib:.1f} MiB of pairs, page cache warm): "
          f"{with_scan * 1000:.1f} ms with the NaN/infinity scan, {shapes_only * 1000:.1f} ms "
          "with the shape checks only (once per run, not per epoch).")


if __name__ == "__main__":
    main()
