"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) on precomputed distance matrices.

Same algorithm and defaults as the reference AGW code (k1=20, k2=6, lambda=0.3), with the same
column-max normalisation of the joint (query + gallery) distance matrix, but laid out to fit a
Market-sized problem in memory:

- the joint matrix is never assembled: rows are built block by block from the three inputs, and
  only each row's max and its k nearest neighbours are kept;
- the encoding V is a sparse matrix (each row has at most a few hundred non-zeros), the query
  expansion is a sparse product, and the Jaccard distance is computed from an inverted index with
  a memory budget on the (query, gallery, shared-neighbour) triples.

Differences from the reference, on purpose: V is float32 (the reference stores float16), and
nearest-neighbour ties are broken by index (the reference's quicksort leaves them unspecified).
Distances are used as given (the reference feeds squared Euclidean distances and squares nothing).
"""
import numpy as np
import scipy.sparse
import torch

_TRIPLE_BUDGET = 4_000_000


def _as_distance_matrix(matrix, name, shape):
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix)
    if matrix.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a numeric distance matrix; got dtype {matrix.dtype}")
    if matrix.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {matrix.shape}")
    matrix = matrix.astype(np.float32, copy=False)
    if np.isnan(matrix).any():
        raise ValueError(f"{name} contains NaN")
    return matrix


class _JointDistances:
    """Rows and entries of the column-normalised joint matrix [[qq^T, qg], [qg^T, gg^T]].

    The reference divides each column of the joint matrix [[qq, qg], [qg^T, gg]] by its max and
    transposes it; row i of the result is column i of the joint matrix over that column's max.
    """

    def __init__(self, q_g, q_q, g_g):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_query = q_g.shape[0]
        self.size = q_g.shape[0] + q_g.shape[1]
        self.row_max = np.empty(self.size, dtype=np.float32)

    def raw_rows(self, start, stop):
        nq = self.num_query
        parts = []
        if start < nq:
            a, b = start, min(stop, nq)
            parts.append(np.hstack([self.q_q[:, a:b].T, self.q_g[a:b]]))
        if stop > nq:
            a, b = max(start, nq) - nq, stop - nq
            parts.append(np.hstack([self.q_g[:, a:b].T, self.g_g[:, a:b].T]))
        return np.vstack(parts) if len(parts) > 1 else parts[0]

    def entries(self, rows, cols):
        """Normalised entries at (rows[n], cols[n]); ``row_max`` must be filled for those rows."""
        nq = self.num_query
        values = np.empty(len(rows), dtype=np.float32)
        row_q, col_q = rows < nq, cols < nq
        for row_mask, col_mask, source, first, second in (
            (row_q, col_q, self.q_q, cols, rows),
            (row_q, ~col_q, self.q_g, rows, cols - nq),
            (~row_q, col_q, self.q_g, cols, rows - nq),
            (~row_q, ~col_q, self.g_g, cols - nq, rows - nq),
        ):
            pick = row_mask & col_mask
            values[pick] = source[first[pick], second[pick]]
        return values / self.row_max[rows]


def stable_smallest(block, k):
    """Column indices of the k smallest values of each row, ordered by (value, index).

    ``torch.topk`` picks the k smallest fast but chooses freely among values tied with the k-th;
    only rows where such a tie straddles the cut are redone exactly (lowest indices win).
    """
    values, index = torch.topk(torch.from_numpy(block), k, dim=1, largest=False, sorted=True)
    values, index = values.numpy(), index.numpy()
    kth = values[:, -1:]
    straddling = np.flatnonzero((block == kth).sum(axis=1) != (values == kth).sum(axis=1))
    if len(straddling):
        rows = block[straddling]
        less = rows < kth[straddling]
        equal = rows == kth[straddling]
        still_needed = k - less.sum(axis=1, keepdims=True)
        chosen = less | (equal & (np.cumsum(equal, axis=1) <= still_needed))
        index[straddling] = np.nonzero(chosen)[1].reshape(len(straddling), k)
    index.sort(axis=1)
    order = np.argsort(np.take_along_axis(block, index, axis=1), axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1)


def _nearest_neighbors(joint, k, chunk_size):
    """Each joint row's k nearest items (itself included) and, as a side effect, its max."""
    neighbors = np.empty((joint.size, k), dtype=np.int64)
    for start in range(0, joint.size, chunk_size):
        stop = min(start + chunk_size, joint.size)
        rows = joint.raw_rows(start, stop)
        row_max = rows.max(axis=1)
        if np.any(row_max <= 0):
            bad = start + int(np.flatnonzero(row_max <= 0)[0])
            raise ValueError(f"re-ranking needs positive distances; joint row {bad} has max {row_max.min()}")
        joint.row_max[start:stop] = row_max
        neighbors[start:stop] = stable_smallest(rows / row_max[:, None], k)
    return neighbors


def _reciprocal(neighbors, chunk_size):
    """mask[i, j]: i is among the neighbours of its j-th neighbour (k-reciprocal)."""
    mask = np.empty(neighbors.shape, dtype=bool)
    for start in range(0, len(neighbors), chunk_size):
        own = np.arange(start, min(start + chunk_size, len(neighbors)))
        mask[own] = (neighbors[neighbors[own]] == own[:, None, None]).any(axis=2)
    return mask


def _expanded_sets(k_nn, k_mask, half_nn, half_mask, rows):
    """(row, member) pairs of each row's k-reciprocal set grown by its candidates' half-k sets.

    A candidate (member of the k-reciprocal set) adds its own k/2-reciprocal set when more than
    2/3 of that set already lies in the row's k-reciprocal set.
    """
    size = len(k_nn)
    own_set = np.where(k_mask[rows], k_nn[rows], -1)
    candidates = k_nn[rows]
    candidate_sets = half_nn[candidates]
    candidate_mask = half_mask[candidates]
    inside = (candidate_sets[..., None] == own_set[:, None, None, :]).any(axis=3) & candidate_mask
    accepted = k_mask[rows] & (inside.sum(axis=2) > 2.0 / 3.0 * candidate_mask.sum(axis=2))
    grown = np.where(accepted[..., None] & candidate_mask, candidate_sets, size)
    members = np.concatenate([np.where(own_set >= 0, own_set, size), grown.reshape(len(rows), -1)], axis=1)
    members.sort(axis=1)
    fresh = members < size
    fresh[:, 1:] &= members[:, 1:] != members[:, :-1]
    local_rows, position = np.nonzero(fresh)
    return rows[local_rows], members[local_rows, position]


def _encoding(joint, neighbors, k1, chunk_size):
    """Sparse V: row i holds exp(-d(i, j)) / sum over i's expanded k-reciprocal set."""
    k_nn = neighbors[:, :min(k1 + 1, neighbors.shape[1])]
    half_nn = neighbors[:, :min(int(np.around(k1 / 2)) + 1, neighbors.shape[1])]
    k_mask = _reciprocal(k_nn, chunk_size)
    half_mask = _reciprocal(half_nn, chunk_size)
    row_parts, col_parts = [], []
    for start in range(0, joint.size, chunk_size):
        rows = np.arange(start, min(start + chunk_size, joint.size))
        r, c = _expanded_sets(k_nn, k_mask, half_nn, half_mask, rows)
        row_parts.append(r)
        col_parts.append(c)
    rows, cols = np.concatenate(row_parts), np.concatenate(col_parts)
    weights = np.exp(-joint.entries(rows, cols).astype(np.float64))
    weights /= np.bincount(rows, weights=weights, minlength=joint.size)[rows]
    return scipy.sparse.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=(joint.size, joint.size))


def _query_expansion(encoding, neighbors, k2):
    """V_qe[i] = mean of V over i's k2 nearest neighbours (as a sparse product)."""
    kq = min(k2, neighbors.shape[1])
    size = encoding.shape[0]
    averaging = scipy.sparse.csr_matrix(
        (np.full(size * kq, 1.0 / kq, dtype=np.float32),
         (np.repeat(np.arange(size), kq), neighbors[:, :kq].ravel())),
        shape=(size, size),
    )
    return (averaging @ encoding).tocsr()


def _jaccard_rows(query_rows, gallery_columns, num_gallery):
    """1 - sum_k min(Vq, Vg) / (2 - sum_k min(Vq, Vg)) for a block of queries x all gallery."""
    num_rows = query_rows.shape[0]
    column_nnz = np.diff(gallery_columns.indptr)
    shared = query_rows.indices
    lengths = column_nnz[shared]
    total = int(lengths.sum())
    offsets = np.repeat(gallery_columns.indptr[shared] - (np.cumsum(lengths) - lengths), lengths)
    position = offsets + np.arange(total)
    owner = np.repeat(np.repeat(np.arange(num_rows), np.diff(query_rows.indptr)), lengths)
    overlap = np.minimum(np.repeat(query_rows.data, lengths), gallery_columns.data[position])
    min_sum = np.bincount(
        owner * num_gallery + gallery_columns.indices[position], weights=overlap,
        minlength=num_rows * num_gallery,
    ).reshape(num_rows, num_gallery)
    return 1.0 - min_sum / (2.0 - min_sum)


def _query_blocks(query_encoding, gallery_columns, chunk_size):
    """Query ranges whose (query, shared neighbour, gallery) triples stay within the budget."""
    column_nnz = np.diff(gallery_columns.indptr)
    per_entry = column_nnz[query_encoding.indices]
    non_empty = np.diff(query_encoding.indptr) > 0
    per_query = np.add.reduceat(np.append(per_entry, 0), query_encoding.indptr[:-1]) * non_empty
    start = 0
    while start < len(per_query):
        cumulative = np.cumsum(per_query[start:start + chunk_size])
        stop = start + max(1, int(np.searchsorted(cumulative, _TRIPLE_BUDGET, side="right")))
        yield start, stop
        start = stop


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, chunk_size=1024):
    """Re-ranked query x gallery distances (float32 numpy), from the three distance matrices.

    final = (1 - lambda) * Jaccard distance of the k-reciprocal encodings
            + lambda * original distance (each joint column divided by its max).
    Inputs may be numpy or torch; ``chunk_size`` rows of the joint matrix are materialised at once.
    """
    for name, value in (("k1", k1), ("k2", k2), ("chunk_size", chunk_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1]; got {lambda_value!r}")
    q_g_shape = tuple(q_g_dist.shape)
    if len(q_g_shape) != 2:
        raise ValueError(f"q_g_dist must be 2-D (num_query, num_gallery); got shape {q_g_shape}")
    num_query, num_gallery = q_g_shape
    q_g = _as_distance_matrix(q_g_dist, "q_g_dist", (num_query, num_gallery))
    q_q = _as_distance_matrix(q_q_dist, "q_q_dist", (num_query, num_query))
    g_g = _as_distance_matrix(g_g_dist, "g_g_dist", (num_gallery, num_gallery))
    joint = _JointDistances(q_g, q_q, g_g)

    neighbors = _nearest_neighbors(joint, min(max(k1 + 1, k2), joint.size), chunk_size)
    encoding = _encoding(joint, neighbors, k1, chunk_size)
    if k2 != 1:
        encoding = _query_expansion(encoding, neighbors, k2)
    query_encoding = encoding[:num_query]
    gallery_columns = encoding[num_query:].tocsc()

    final = np.empty((num_query, num_gallery), dtype=np.float32)
    for start, stop in _query_blocks(query_encoding, gallery_columns, chunk_size):
        jaccard = _jaccard_rows(query_encoding[start:stop], gallery_columns, num_gallery)
        original = q_g[start:stop] / joint.row_max[start:stop, None]
        final[start:stop] = (1.0 - lambda_value) * jaccard + lambda_value * original
    return final
