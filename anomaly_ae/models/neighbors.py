"""Distance to the nearest training samples: density evidence that reconstruction error misses.

An autoencoder flags what lies off the normal manifold; a rare point *on* it (a sparse region of
normal behaviour) reconstructs well but is far from its neighbours. The reference rows are kept as
a buffer, so they travel in the safetensors file like any weight: either (preprocessed) training
rows, or k-means prototypes of them (`kmeans_prototypes`), which keep raw rows out of the file.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn


class _Projection(NamedTuple):
    """`NearestNeighbors._bounded_distances`'s index of the reference rows (n of them)."""
    basis: np.ndarray  # (D, p) orthonormal columns: the main directions
    projected_t: np.ndarray  # (p, n) float32: the rows' coordinates in the basis
    projected_sq: np.ndarray  # (n,) float32: their squared norms
    residual: np.ndarray  # (n,) float32: the rows' distances to the basis' span
    reference_sq: np.ndarray  # (n,) float64: the rows' squared norms
    reference_sq32: np.ndarray  # (n,) float32: the same
    reference_sq_max: float
    projected_sq_max: float


class NearestNeighbors(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_reference: int, k: int) -> None:
        super().__init__()
        n_features = math.prod(input_shape)
        self.k = k
        self.register_buffer("reference", torch.zeros(n_reference, n_features))

    @torch.no_grad()
    def set_reference(self, x: torch.Tensor) -> None:
        self.reference.copy_(x.flatten(1))

    @torch.no_grad()
    def distances(self, x: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean distance to the k nearest reference rows (N,), and each feature's squared gap to the
        nearest one (N, F), which explains the distance the way reconstruction errors explain theirs."""
        flat = x.flatten(1)
        if self.reference.device.type == "cpu":
            means, gaps = self.nearest(flat.numpy().astype(np.float32, copy=False))
            return torch.from_numpy(means), torch.from_numpy(gaps)
        means, gaps = [], []
        for start in range(0, len(flat), chunk):
            part = flat[start:start + chunk]
            dist = torch.cdist(part, self.reference)
            nearest = dist.topk(min(self.k, dist.shape[1]), largest=False)
            means.append(nearest.values.mean(-1))
            gaps.append((part - self.reference[nearest.indices[:, 0]]).pow(2))
        return torch.cat(means), torch.cat(gaps)

    def numpy_distances(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`distances` of flattened float32 queries (N, D) on the reference's device, as numpy: (N,)
        float64 and (N, D) (`nearest` on the CPU: no round trip through torch tensors)."""
        if self.reference.device.type == "cpu":
            return self.nearest(queries)
        means, gaps = self.distances(torch.from_numpy(queries).to(self.reference.device))
        return means.cpu().double().numpy(), gaps.cpu().double().numpy()

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`distances` on the CPU for queries (N, D) float32: (N,) float64 and (N, D) float32.

        The k nearest rows are picked from float32 products (|r|^2 - 2 q.r ranks the rows for a
        query), QUERY_CHUNK queries at a time so the (chunk x n) block stays in cache; the picked
        rows' distances are then measured from their differences, summed in float64, so a row's score
        does not carry the products' cancellation error (the same for a row alone or in a batch, to
        float32 rounding of the differences). `_smallest` picks without sorting each whole row."""
        reference = self.reference.numpy()
        reference_t, reference_sq, size = self._brute_index()
        k = min(self.k, len(reference))
        means = np.empty(len(queries))
        gaps = np.empty(queries.shape, dtype=np.float32)
        # one block for every chunk: a fresh (chunk x n) block each time cost as much as the product
        # itself (new pages from the system for each), per call so concurrent requests never share it
        block = torch.empty(min(QUERY_CHUNK, len(queries)), reference_t.shape[1])
        for start in range(0, len(queries), QUERY_CHUNK):
            part = queries[start:start + QUERY_CHUNK]
            # torch's product: it follows the process's torch threads (2 while fitting, 1 in a worker)
            rank = torch.addmm(reference_sq, torch.from_numpy(part), reference_t, alpha=-2.0,
                               out=block[:len(part)])  # (c, groups x size)
            picked = _smallest(rank, k, size, len(reference))  # (c, k)
            differences = part[:, None, :] - reference[picked]  # (c, k, D)
            d2 = np.einsum("ckd,ckd->ck", differences, differences, dtype=np.float64)
            means[start:start + len(part)] = np.sqrt(d2).sum(1) / k  # not .mean: its wrapper is a 1-row call's 5%
            nearest = d2.argmin(1)
            gaps[start:start + len(part)] = np.square(differences[np.arange(len(part)), nearest])
        return means, gaps

    def _brute_index(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(reference transposed (D, n'), squared norms (n',)) as float32 tensors, and a group size:
        n' = n rounded up to whole groups of about sqrt(n) columns (a multiple of GROUP_STEP), the extra
        columns at infinity (never picked), so `_smallest` views the groups without a copy. Built on
        first use and kept until the reference changes."""
        key = (self.reference.data_ptr(), self.reference._version)
        cached = getattr(self, "_brute_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        reference = self.reference.numpy()
        n = len(reference)
        size = GROUP_STEP * max(1, round(np.sqrt(n) / GROUP_STEP))
        padded = -(-n // size) * size
        reference_t = torch.zeros(reference.shape[1], padded)
        reference_t[:, :n] = self.reference.T
        reference_sq = torch.full((padded,), float("inf"))
        reference_sq[:n] = torch.from_numpy(np.square(reference, dtype=np.float64).sum(1).astype(np.float32))
        index = (reference_t, reference_sq, size)
        self._brute_cache = (key, index)
        return index

    @torch.no_grad()
    def window_distances(self, x: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`distances` of flattened windows given as rows x (N, F) and row indices (b, window), without
        building the flattened copies: the same values (to float rounding) when the reference holds
        windows that slide along a few base rows (a series model's training windows), else None.

        A query window q and a reference window r that start at rows a of the query sequence and c
        of the reference's base rows have the cross term q.r = sum_s H[a + s, c + s], H = rows x
        base rows^T: one (rows x base rows x F) product for every pair, where the flattened windows
        cost (windows x reference x window x F), and base rows small enough to stay in cache where
        the flattened reference (10,000 windows of 64 x 38 values: 97 MB) is read from memory for
        each request. Up to BOUNDED_MAX_WINDOWS windows (a stream's new rows) are first searched with
        lower bounds (`_bounded_distances`), whatever the reference holds."""
        window, n_features = windows.shape[1], x.shape[1]
        if self.reference.device.type != "cpu" or self.reference.shape[1] != window * n_features:
            return None
        if len(windows) <= BOUNDED_MAX_WINDOWS:
            bounded = self._bounded_distances(x[windows].reshape(len(windows), -1).astype(np.float32))
            if bounded is not None:
                return bounded
        index = self._sliding(window)
        if index is None:
            return None
        base_t, starts, reference_sq = index
        sequence, query_starts = slide_base(windows[:, :, None])
        if max(len(sequence) * base_t.shape[1], len(windows) * len(reference_sq)) > MAX_CROSS and len(windows) > 1:
            half = len(windows) // 2
            first, second = self.window_distances(x, windows[:half]), self.window_distances(x, windows[half:])
            assert first is not None and second is not None
            return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])
        rows = np.ascontiguousarray(x[sequence[:, 0]], dtype=np.float32)  # (L, F)
        cross = rows @ base_t  # (L, m) float32 products of F values (numpy's matmul: steadier than torch's here)
        diagonals = _diagonal_sums(cross, query_starts.tolist(), window)  # (b, windows starting at each base row)
        cumulative = np.concatenate([[0.0], np.square(rows, dtype=np.float64).sum(1).cumsum()])
        query_sq = cumulative[query_starts + window] - cumulative[query_starts]
        d2 = diagonals if starts is None else diagonals[:, starts]
        d2 *= -2.0
        d2 += reference_sq
        d2 += query_sq[:, None]
        np.maximum(d2, 0.0, out=d2)
        k = min(self.k, d2.shape[1])
        smallest = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else np.tile(np.arange(k), (len(d2), 1))
        values = np.take_along_axis(d2, smallest, axis=1)
        nearest = smallest[np.arange(len(d2)), values.argmin(1)]
        # float32 like `distances` (numpy here: torch's per-op overhead was ~0.25 ms of a 1-row request)
        queries = x[windows].reshape(len(windows), -1).astype(np.float32)
        gaps = np.square(queries - self.reference.numpy()[nearest], dtype=np.float32)
        return np.sqrt(values).mean(1), gaps.astype(np.float64)

    def _bounded_distances(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`distances` of a few flattened queries (b, D) float32, measured only to the reference rows
        that a lower bound cannot rule out; None when too many remain (brute force is then cheaper).

        With V an orthonormal basis of the reference's main directions (`_projection`), every
        |q - r|^2 >= |V'q - V'r|^2 + (|q - VV'q| - |r - VV'r|)^2: a product with p columns instead of D.
        The BOUNDED_FIRST rows of smallest bound over all queries give each query's k-th smallest
        distance so far, tau; only rows whose bound is below tau can be nearer. Those rows are ranked
        by float32 products, and the ones a product's rounding (`_product_slack`) leaves among the
        k nearest are measured by float64 products of the float32 values, so the result is the
        brute-force one: float32 values alone (a third of the time) put a stream's scores ~2e-6 off
        an offline pass's, past what the watcher's equality with it allows."""
        (basis, projected_t, projected_sq, residual, reference_sq, reference_sq32, reference_sq_max,
         projected_sq_max) = self._projection()
        reference = self.reference.numpy()
        n, k = len(reference), min(self.k, len(reference))
        exact = queries.astype(np.float64)
        query_sq = np.square(exact).sum(1)
        query_projected = exact @ basis
        query_projected_sq = np.square(query_projected).sum(1)
        query_residual = np.sqrt(np.maximum(query_sq - query_projected_sq, 0.0))
        # float32 throughout (a (b, n) block each step): its rounding is inside the slack below
        bound = query_projected.astype(np.float32) @ projected_t
        bound *= -2.0
        bound += projected_sq
        bound += query_projected_sq.astype(np.float32)[:, None]
        gap = residual - query_residual.astype(np.float32)[:, None]
        gap *= gap
        bound += gap  # (b, n)
        slack = _product_slack(queries.shape[1], query_sq, reference_sq_max)  # (b,)
        query_sq32 = query_sq.astype(np.float32)

        def rank(rows: np.ndarray) -> np.ndarray:  # (rows, b) float32, within `slack` of the exact values
            return reference_sq32[rows, None] + query_sq32 - 2 * (reference[rows] @ queries.T)

        # consecutive windows of a stream share their nearest rows: the smallest bound over all queries
        first = max(BOUNDED_FIRST, k)
        rows = np.argpartition(bound.min(0), first - 1)[:first] if n > first else np.arange(n)
        d2 = rank(rows)
        tau = np.partition(d2, k - 1, axis=0)[k - 1] + slack  # at least every query's exact k-th smallest
        maybe = bound <= (tau * (1 + 1e-5) + 1e-5 * (projected_sq_max + query_sq))[:, None]
        maybe[:, rows] = False
        extra = np.flatnonzero(maybe.any(0))
        if len(extra) > BOUNDED_MAX_SHARE * n:
            return None
        rows, d2 = np.concatenate([rows, extra]), np.concatenate([d2, rank(extra)])
        kth = np.partition(d2, k - 1, axis=0)[k - 1] if k < len(d2) else d2.max(0)
        close = rows[(d2 <= kth + 2 * slack).any(1)]  # every query's exact k nearest are among these
        measured = reference_sq[close, None] + query_sq - 2 * (reference[close].astype(np.float64) @ exact.T)
        np.maximum(measured, 0.0, out=measured)
        smallest = np.argpartition(measured, k - 1, axis=0)[:k] if k < len(close) \
            else np.tile(np.arange(len(close))[:, None], len(queries))
        values = np.take_along_axis(measured, smallest, axis=0)  # (k, b)
        nearest = close[smallest[values.argmin(0), np.arange(len(queries))]]
        gaps = np.square(queries - reference[nearest], dtype=np.float32)
        return np.sqrt(values).mean(0), gaps.astype(np.float64)

    def _projection(self) -> _Projection:
        """The reference's main directions and what the bounds need of each row, built on first use
        and kept until the reference changes. The basis: the main directions of up to 256 reference
        rows taken at even steps (any orthonormal basis gives valid bounds; a good one gives tight
        ones)."""
        key = (self.reference.data_ptr(), self.reference._version)
        cached = getattr(self, "_projection_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        reference = self.reference.numpy()
        picked = np.linspace(0, len(reference) - 1, min(len(reference), 256)).astype(int)
        sample = reference[picked].astype(np.float64)
        eigenvalues, vectors = np.linalg.eigh(sample @ sample.T)
        top = np.argsort(eigenvalues)[::-1][:BOUNDED_COMPONENTS]
        top = top[eigenvalues[top] > 1e-9 * max(float(eigenvalues.max(initial=0.0)), 1e-300)]
        basis = np.linalg.qr((sample.T @ vectors[:, top]) / np.sqrt(eigenvalues[top]))[0]
        projected = reference.astype(np.float64) @ basis
        projected_sq = np.square(projected).sum(1)
        reference_sq = np.square(reference, dtype=np.float64).sum(1)
        residual = np.sqrt(np.maximum(reference_sq - projected_sq, 0.0))
        index = _Projection(np.ascontiguousarray(basis), np.ascontiguousarray(projected.T, dtype=np.float32),
                            projected_sq.astype(np.float32), residual.astype(np.float32), reference_sq,
                            reference_sq.astype(np.float32), float(reference_sq.max(initial=0.0)),
                            float(projected_sq.max(initial=0.0)))
        self._projection_cache = (key, index)
        return index

    def _sliding(self, window: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
        """(base rows transposed (F, m) float32, each reference window's first base row (n,; None when
        that is 0, 1, ...), their squared norms (n,) float64), built on first use and kept until the reference changes; None
        when the windows do not share their rows (sampled far apart, or prototypes)."""
        key = (window, self.reference.data_ptr(), self.reference._version)
        cached = getattr(self, "_sliding_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        reference = self.reference.numpy()
        n = len(reference)
        base, starts = slide_base(reference.reshape(n, window, -1), max_shift=MAX_SHIFT)
        index = None
        if n and len(base) <= MAX_BASE_SHARE * n * window:
            contiguous = len(base) == n + window - 1  # one run of windows, one step apart: no gather
            index = (np.ascontiguousarray(base.T, dtype=np.float32), None if contiguous else starts,
                     np.square(reference, dtype=np.float64).sum(1))
        self._sliding_cache = (key, index)
        return index


def _diagonal_sums(cross: np.ndarray, starts: list[int], window: int) -> np.ndarray:
    """(len(starts), m - window + 1) float64: out[j, c] = sum over s < window of cross[starts[j] + s, c + s],
    in float64 (so a window's sum does not depend on the others scored with it, to float64 rounding).
    A query that starts one row after the one before reuses its sums: one row in, one out."""
    m = cross.shape[1]
    span = m - window + 1
    flat = cross.reshape(-1)
    out = np.empty((len(starts), span))
    for j, a in enumerate(starts):
        if j and a == starts[j - 1] + 1:
            out[j, 1:] = out[j - 1, :-1]
            out[j, 1:] -= cross[a - 1, :span - 1]
            out[j, 1:] += cross[a - 1 + window, window:]
            out[j, 0] = np.lib.stride_tricks.as_strided(flat[a * m:], (window,), ((m + 1) * flat.itemsize,)).sum(
                dtype=np.float64)
        else:
            part = np.lib.stride_tricks.as_strided(flat[a * m:], (window, span),
                                                   ((m + 1) * flat.itemsize, flat.itemsize))
            np.sum(part, axis=0, dtype=np.float64, out=out[j])
    return out


# Windows scored at once up to which lower bounds are tried first (`_bounded_distances`): a stream's new
# row and the rows before it that the alert rule counts (5 by default). More windows (an incident's
# counted context rows, scored when the rule's cooldown decides) go straight to brute force, which costs about
# the same for one window or a hundred.
BOUNDED_MAX_WINDOWS = 8
# Main directions of the reference in the bounds, rows ranked first (smallest bound over all queries),
# and the share of the reference past which the bounds rule out too little to beat brute force.
BOUNDED_COMPONENTS = 16
BOUNDED_FIRST = 32
BOUNDED_MAX_SHARE = 1 / 8
# Queries ranked against the reference at once: a (chunk x 10,000) float32 block stays in cache.
QUERY_CHUNK = 128
# Values up to which `_smallest` sorts partially rather than by groups (measured crossover: ~64k).
SMALL_BLOCK = 1 << 16
# Group sizes are multiples of this: torch's minimum over groups of 32k columns took a seventh of the
# time of groups of 63 (0.11 against 0.81 ms for 128 x 4,032 values).
GROUP_STEP = 32
# Base rows above this share of the reference's window rows: windows sampled too far apart to share rows.
MAX_BASE_SHARE = 0.25
# The (query rows x base rows) products, and (windows x reference) distances, kept at once: more in parts.
MAX_CROSS = 1 << 24
# Steps between neighbouring reference windows looked for (a reference sampled from up to 8x more windows).
MAX_SHIFT = 8


def _product_slack(length: int, query_sq: np.ndarray, reference_sq_max: float) -> np.ndarray:
    """An upper bound on how far float32 |r|^2 + |q|^2 - 2 q.r of vectors of `length` values lies from
    the exact value, for every reference row r: a dot product's rounding is at most about length *
    2^-24 * |q| |r| in any summation order (doubled here), and the norms' and the two sums' roundings
    at most 2^-24 times each of |q|^2, |r|^2 and 2 |q| |r| (counted 8 times here)."""
    return (2 * length + 8) * 2.0 ** -24 * (np.sqrt(query_sq * reference_sq_max) + query_sq + reference_sq_max)


def _smallest(values: torch.Tensor, k: int, size: int, n: int) -> np.ndarray:
    """Column indices of the k smallest values among the first n columns of each row of `values`
    (c, whole groups of `size` columns; the columns past n at infinity), in no order.

    A row's k smallest values lie in the k groups of smallest minimum (a value outside them has at
    least k smaller ones, one in each of those groups), so only k groups are searched, where a
    partial sort of whole rows reads every value several times: 1,000 queries x 4,000 rows, 16 ms
    with the products against 24 ms with a partial sort of each row. Its half-dozen torch calls cost
    ~0.2 ms, so a block of up to SMALL_BLOCK values (a 1-row request) takes one partial sort."""
    c, width = values.shape
    groups = width // size
    if groups <= 2 * k or c * width <= SMALL_BLOCK:
        return values[:, :n].topk(k, largest=False, sorted=False).indices.numpy()
    grouped = values.view(c, groups, size)
    best = grouped.amin(2).topk(k, largest=False, sorted=False).indices.numpy()  # (c, k) groups
    # numpy's fancy indexing copies the k groups several times faster than torch's gather at these sizes
    rows = np.arange(c)[:, None]
    candidates = torch.from_numpy(grouped.numpy()[rows, best].reshape(c, -1))
    picked = candidates.topk(k, largest=False, sorted=False).indices.numpy()  # positions in the k groups
    columns = best[rows, picked // size] * size + picked % size
    # a column past n only if a real value were infinite too (inputs are finite and clipped)
    return np.minimum(columns, n - 1, out=columns)


def slide_base(windows: np.ndarray, max_shift: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Windows (n, w, ...) as base rows and starts: windows[j] == base[starts[j]:starts[j] + w].

    A window that equals the one before it moved on by d < w steps (d <= max_shift) adds its last d
    rows; any other adds all its w rows. Windows cut from one series in time order therefore share
    their rows."""
    n, w = windows.shape[:2]
    if n == 0:
        return windows.reshape(0, *windows.shape[2:]), np.zeros(0, dtype=np.int64)
    flat = windows.reshape(n, w, -1)
    added = np.full(n, w, dtype=np.int64)
    open_ = np.arange(1, n)
    for shift in range(1, w if max_shift is None else min(w, max_shift + 1)):
        if not len(open_):
            break
        same = (flat[open_, :w - shift] == flat[open_ - 1, shift:]).all(axis=(1, 2))
        added[open_[same]] = shift
        open_ = open_[~same]
    ends = np.cumsum(added)
    starts = ends - w
    owner = np.repeat(np.arange(n), added)  # which window each base row comes from
    offset = np.arange(len(owner)) - np.repeat(ends - added, added) + np.repeat(w - added, added)
    return windows[owner, offset], starts


MIN_PROTOTYPE_ROWS = 2  # a prototype is the mean of at least this many training rows


def kmeans_prototypes(x: np.ndarray, n_prototypes: int, seed: int) -> np.ndarray:
    """At most `n_prototypes` k-means centroids of the rows of x (N, F), as float32, instead of rows.

    MiniBatchKMeans (seeded, one thread so the result does not depend on the machine's thread
    count) places the centres; each kept centre is then the exact mean of the rows assigned to it,
    and a centre with fewer than MIN_PROTOTYPE_ROWS rows is dropped, so no prototype is one row
    (it equals a training row only where every row averaged into it is that same row, duplicated).
    """
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    x64 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n_clusters = max(1, min(int(n_prototypes), len(x64) // MIN_PROTOTYPE_ROWS))
    with threadpool_limits(1):
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=1, batch_size=2048,
                             max_iter=100).fit(x64)
        labels = km.predict(x64)
    counts = np.bincount(labels, minlength=n_clusters)
    sums = np.zeros((n_clusters, x64.shape[1]))
    np.add.at(sums, labels, x64)
    keep = counts >= MIN_PROTOTYPE_ROWS  # never empty: the counts sum to N >= 2 * n_clusters
    return (sums[keep] / counts[keep, None]).astype(np.float32)
