"""Time and memory of Re-ID scoring on a Market-1501-sized problem (3,368 x 15,913, 2048-d).

Features are random but identity-structured (a random centre per identity plus noise), with
Market-like labels: ~750 identities, 6 cameras, pid-0 distractors in the gallery. The distance
matrix and the ranking are timed separately; ``--with-loop`` also times a per-query Python loop in
the style of the reference ``eval_func`` on a subset of queries and extrapolates it to all of
them; ``--with-rerank`` times k-reciprocal re-ranking on the full problem.

Peak memory: the process's resident high-water mark per step (Linux: reset through
/proc/self/clear_refs before each step; elsewhere the lifetime peak from getrusage), and for the
numpy ranking also tracemalloc's peak of the step's own allocations (a second, traced run).

    python benchmarks/bench_reid_metrics.py [--with-loop] [--with-rerank] [--threads 2]
"""
import argparse
import os
import resource
import time
import tracemalloc

import numpy as np
import torch

from evaluation.reid import evaluate_rank, pairwise_distance
from evaluation.rerank import re_ranking

MIB = 2.0 ** 20


def market_like_problem(num_query, num_gallery, dim, num_ids, num_cams, distractor_share, noise, seed):
    """Query/gallery features and labels shaped like Market-1501's test split.

    Each feature is its identity's unit-variance centre plus ``noise``-scaled Gaussian noise;
    distractors are pure noise. Larger noise means harder retrieval (lower mAP).
    """
    rng = np.random.default_rng(seed)
    centers = torch.from_numpy(rng.standard_normal((num_ids + 1, dim), dtype=np.float32))
    q_pids = rng.integers(1, num_ids + 1, num_query)
    num_distractors = int(distractor_share * num_gallery)
    g_pids = np.concatenate([
        np.zeros(num_distractors, np.int64), rng.integers(1, num_ids + 1, num_gallery - num_distractors),
    ])
    q_camids = rng.integers(1, num_cams + 1, num_query)
    g_camids = rng.integers(1, num_cams + 1, num_gallery)
    generator = torch.Generator().manual_seed(seed)
    query = centers[q_pids] + noise * torch.randn(num_query, dim, generator=generator)
    gallery = centers[g_pids] + noise * torch.randn(num_gallery, dim, generator=generator)
    gallery[:num_distractors] = noise * torch.randn(num_distractors, dim, generator=generator)
    return query, gallery, q_pids, g_pids, q_camids, g_camids


def reset_peak_rss():
    """True when the kernel's resident high-water mark could be reset for this process."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def proc_status_mib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mib():
    peak = proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measured(step, repeat=1):
    """(result, best seconds of ``repeat`` runs, "RSS at start -> peak RSS" in MiB).

    The best run is reported because the machine may be shared; the peak is the process lifetime
    peak where the high-water mark cannot be reset.
    """
    reset_peak_rss()
    start_rss = proc_status_mib("VmRSS")
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - start)
    start_text = "?" if start_rss is None else f"{start_rss:.0f}"
    return result, best, f"{start_text} -> {peak_rss_mib():.0f}"


def traced_peak_mib(step):
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / MIB


def loop_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Per-query loop in the style of the reference eval_func (quicksort argsort of whole rows)."""
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(distmat.shape[0]):
        order = indices[q]
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        hits = matches[q][keep]
        if not np.any(hits):
            continue
        cmc = hits.cumsum()
        hardest = np.max(np.where(hits == 1))
        all_inp.append(cmc[hardest] / (hardest + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = np.asarray([x / (i + 1.0) for i, x in enumerate(hits.cumsum())]) * hits
        all_ap.append(precision.sum() / hits.sum())
    return np.asarray(all_cmc, np.float32).mean(0), float(np.mean(all_ap)), float(np.mean(all_inp))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-query", type=int, default=3368)
    parser.add_argument("--num-gallery", type=int, default=15913)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--num-ids", type=int, default=750)
    parser.add_argument("--num-cams", type=int, default=6)
    parser.add_argument("--distractor-share", type=float, default=0.18,
                        help="share of pid-0 distractors in the gallery (Market: about 2,800 of 15,913)")
    parser.add_argument("--noise", type=float, default=4.0, help="feature noise relative to identity centres")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; the best time is reported")
    parser.add_argument("--chunk-size", type=int, default=256, help="queries per ranking chunk")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-loop", action="store_true", help="also time a reference-style per-query loop")
    parser.add_argument("--with-rerank", action="store_true",
                        help="also time k-reciprocal re-ranking (needs the 1 GiB gallery x gallery matrix)")
    parser.add_argument("--loop-queries", type=int, default=300,
                        help="queries the loop runs on (then extrapolated)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    query, gallery, q_pids, g_pids, q_camids, g_camids = market_like_problem(
        args.num_query, args.num_gallery, args.dim, args.num_ids, args.num_cams, args.distractor_share,
        args.noise, args.seed,
    )
    labels = (q_pids, g_pids, q_camids, g_camids)
    distmat, distance_s, distance_peak = measured(
        lambda: pairwise_distance(query, gallery).numpy(), args.repeat
    )
    scores, ranking_s, ranking_peak = measured(
        lambda: evaluate_rank(distmat, *labels, chunk_size=args.chunk_size), args.repeat
    )
    ranking_traced = traced_peak_mib(lambda: evaluate_rank(distmat, *labels, chunk_size=args.chunk_size))

    rows = [
        ("distance (L2-normalised, squared Euclidean)", distance_s, distance_peak,
         f"{distmat.nbytes / MIB:.0f} MiB matrix, {torch.get_num_threads()} torch threads"),
        ("ranking: CMC, mAP, mINP (vectorised)", ranking_s, ranking_peak,
         f"own allocations {ranking_traced:.0f} MiB (tracemalloc), chunk {args.chunk_size}"),
    ]
    if args.with_loop:
        subset = slice(0, min(args.loop_queries, args.num_query))
        sub_labels = (q_pids[subset], g_pids, q_camids[subset], g_camids)
        loop_scores, loop_s, loop_peak = measured(lambda: loop_eval(distmat[subset], *sub_labels))
        sub_scores = evaluate_rank(distmat[subset], *sub_labels)
        agree = (np.isclose(loop_scores[1], sub_scores["mAP"])
                 and np.isclose(loop_scores[2], sub_scores["mINP"]))
        extrapolated = loop_s * args.num_query / (subset.stop - subset.start)
        rows.append(("ranking: per-query loop (reference style)", extrapolated, loop_peak,
                     f"{loop_s:.2f} s on {subset.stop} queries, extrapolated; "
                     f"{'same' if agree else 'DIFFERENT'} mAP/mINP as vectorised on them"))

    if args.with_rerank:
        (query_query, gallery_gallery), pair_s, pair_peak = measured(
            lambda: (pairwise_distance(query, query).numpy(), pairwise_distance(gallery, gallery).numpy())
        )
        rows.append(("distance: query x query and gallery x gallery", pair_s, pair_peak,
                     f"{gallery_gallery.nbytes / MIB:.0f} MiB gallery matrix"))
        reranked, rerank_s, rerank_peak = measured(lambda: re_ranking(distmat, query_query, gallery_gallery))
        rerank_scores = evaluate_rank(reranked, *labels, chunk_size=args.chunk_size)
        rows.append(("k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)", rerank_s, rerank_peak,
                     f"mAP {scores['mAP']:.3f} -> {rerank_scores['mAP']:.3f}, "
                     f"Rank-1 {scores['cmc'][0]:.3f} -> {rerank_scores['cmc'][0]:.3f}"))

    print(f"Problem: {args.num_query} queries x {args.num_gallery} gallery, {args.dim}-d, "
          f"{scores['num_valid_queries']} valid queries; Rank-1 {scores['cmc'][0]:.3f}, "
          f"mAP {scores['mAP']:.3f}, mINP {scores['mINP']:.3f}")
    print("Peak RSS is per step" if reset_peak_rss() else "Peak RSS is the process lifetime peak")
    print(f"Times: best of {args.repeat} runs (distance, vectorised ranking); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print("| step | time (s) | RSS at start -> peak (MiB) | notes |")
    print("|---|---|---|---|")
    for name, seconds, peak, note in rows:
        print(f"| {name} | {seconds:.2f} | {peak} | {note} |")


if __name__ == "__main__":
    main()
