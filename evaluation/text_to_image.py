"""Text-to-image retrieval metrics as IRRA scores them (``utils/metrics.py``'s ``rank``).

Similarity = L2-normalised text features @ L2-normalised image features^T; each caption ranks every
gallery image by descending similarity, with no camera or self-match filtering. CMC at k is the share
of captions with a match in the first k images; AP is the mean of the precision at each match; INP
is (number of matches) / (rank of the last match). Values are fractions in [0, 1] (IRRA prints
percent). Image-to-text is the same on the transposed matrix.

Where this differs from IRRA's function, it is for inputs IRRA does not handle: a gallery shorter
than a reported rank (IRRA fails below 10 images) takes the cumulative match at its last position
and lists that rank in ``clipped_ranks``; a query without any match in the gallery is skipped
(IRRA divides by zero) and ``num_valid_queries`` counts the rest; ties rank by gallery index (a
stable sort; IRRA's ``argsort`` leaves their order unspecified).
"""
import torch

REPORTED_RANKS = (1, 5, 10)
# mode -> gallery image features scored against the (never changed) captions.
TEXT_PROTECTION_MODES = {"clean2clean": "original", "clean2encry": "protected"}


def _features(features, name):
    tensor = torch.as_tensor(features)
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (num_items, feature_dim) array; got {tuple(tensor.shape)}")
    return tensor.float() if tensor.dtype not in (torch.float32, torch.float64) else tensor


def _labels(labels, name, length):
    tensor = torch.as_tensor(labels)
    if tensor.dim() != 1 or tensor.shape[0] != length or tensor.is_floating_point():
        raise ValueError(f"{name} must be a 1-D integer array of {length} labels; got {tuple(tensor.shape)} "
                         f"{tensor.dtype}")
    return tensor.long().cpu()


def similarity_matrix(text_features, image_features):
    """Cosine similarity of every caption (rows) to every image (columns)."""
    text = _features(text_features, "text features")
    image = _features(image_features, "image features")
    if text.shape[1] != image.shape[1]:
        raise ValueError(f"text and image features differ in dimension: {text.shape[1]} vs {image.shape[1]}")
    dtype = torch.promote_types(text.dtype, image.dtype)
    text = torch.nn.functional.normalize(text.to(dtype), dim=1)
    image = torch.nn.functional.normalize(image.to(device=text.device, dtype=dtype), dim=1)
    return text @ image.t()


def rank_metrics(similarity, query_pids, gallery_pids, ranks=REPORTED_RANKS, chunk_size=1024):
    """CMC at ``ranks``, mAP and mINP of a query x gallery similarity matrix (higher = more similar).

    Returns ``{"rank1": ..., "rank5": ..., "rank10": ..., "mAP", "mINP", "num_queries",
    "num_valid_queries", "num_gallery", "clipped_ranks"}``; see the module docstring for the rules.
    """
    similarity = torch.as_tensor(similarity)
    if similarity.dim() != 2 or 0 in similarity.shape:
        raise ValueError(f"similarity must be a non-empty 2-D (num_query, num_gallery) matrix; "
                         f"got {tuple(similarity.shape)}")
    if torch.isnan(similarity).any():
        raise ValueError("similarity matrix contains NaN")
    if not ranks or any(not isinstance(k, int) or k < 1 for k in ranks):
        raise ValueError(f"ranks must be positive integers; got {ranks!r}")
    num_query, num_gallery = similarity.shape
    query_pids = _labels(query_pids, "query pids", num_query)
    gallery_pids = _labels(gallery_pids, "gallery pids", num_gallery)
    positions = torch.arange(1, num_gallery + 1, dtype=torch.float64)
    hits = torch.zeros(len(ranks), dtype=torch.float64)
    # Per-query values are kept so the means do not depend on the chunking.
    average_precision, inverse_negative_penalty = [], []
    num_valid = 0
    for start in range(0, num_query, chunk_size):
        block = similarity[start:start + chunk_size].detach().cpu()
        order = torch.argsort(block.neg(), dim=1, stable=True)
        matches = gallery_pids[order] == query_pids[start:start + chunk_size, None]
        num_matches = matches.sum(dim=1)
        valid = num_matches > 0
        matches, num_matches = matches[valid].double(), num_matches[valid].double()
        num_valid += int(valid.sum())
        found_by = matches.cumsum(dim=1)
        for index, k in enumerate(ranks):
            hits[index] += (found_by[:, min(k, num_gallery) - 1] > 0).sum()
        average_precision.append(((found_by / positions) * matches).sum(dim=1) / num_matches)
        inverse_negative_penalty.append(num_matches / (matches * positions).amax(dim=1))
    if num_valid == 0:
        raise ValueError("no query has a match in the gallery: check that their pids belong to the same split")
    result = {f"rank{k}": float(hits[index] / num_valid) for index, k in enumerate(ranks)}
    result.update(mAP=float(torch.cat(average_precision).mean()),
                  mINP=float(torch.cat(inverse_negative_penalty).mean()), num_queries=num_query,
                  num_valid_queries=num_valid, num_gallery=num_gallery,
                  clipped_ranks=[k for k in ranks if k > num_gallery])
    return result


def evaluate_text_to_image(text_features, image_features, caption_pids, image_pids, image_to_text=False,
                           ranks=REPORTED_RANKS):
    """``{"text_to_image": metrics}`` (and ``"image_to_text"`` on the transposed matrix when asked)."""
    similarity = similarity_matrix(text_features, image_features)
    results = {"text_to_image": rank_metrics(similarity, caption_pids, image_pids, ranks)}
    if image_to_text:
        results["image_to_text"] = rank_metrics(similarity.t(), image_pids, caption_pids, ranks)
    return results


def evaluate_text_protection(text_features, original_image_features, protected_image_features, caption_pids,
                             image_pids, image_to_text=False, ranks=REPORTED_RANKS):
    """Captions against original (clean2clean) and protected (clean2encry) gallery images.

    Returns ``{"text_to_image": {"clean2clean": ..., "clean2encry": ...}}``, plus the same under
    ``"image_to_text"`` when asked; captions are never protected, so the other two modes do not exist.
    """
    galleries = {"original": original_image_features, "protected": protected_image_features}
    shapes = {name: tuple(torch.as_tensor(features).shape) for name, features in galleries.items()}
    if shapes["original"] != shapes["protected"]:
        raise ValueError(f"original and protected image features differ in shape: {shapes['original']} vs "
                         f"{shapes['protected']}")
    results = {}
    for mode, source in TEXT_PROTECTION_MODES.items():
        scores = evaluate_text_to_image(text_features, galleries[source], caption_pids, image_pids,
                                        image_to_text, ranks)
        for direction, metrics in scores.items():
            results.setdefault(direction, {})[mode] = metrics
    return results
