"""The FAISS index and the one kNN graph every neighbour-based check shares.

Vectors are L2-normalised, so cosine similarity is the inner product and FAISS inner-product search
is exact cosine search. A graph can instead rank by Euclidean distance (`metric="euclidean"`), for
vectors whose length carries meaning, such as thumbnails' brightness. Two ways to build the graph:

* up to `exact_max` vectors, brute force: every vector against all others, in query batches, with
  `faiss.knn` straight on the caller's array (no index, so the vectors are never copied);
* beyond it, an IVF partition searched with dense matrix products. Spherical k-means splits the
  vectors into `n_lists` lists; every vector is assigned to its `n_probe` nearest lists, and for
  each list one BLAS product compares the list's members with every vector that probes it. That
  is the candidate set, hence the recall, of an `IndexIVFFlat` searched with `nprobe = n_probe`,
  but on a 2-core AVX-512 machine the products reached about 25 times the arithmetic throughput of
  IVF's one-query-at-a-time scan (176 against 7 GFLOP/s), and no index holds a second copy of the
  vectors. Similarities are exact (no quantisation), so nothing needs re-ranking.

Both paths use the GPU when FAISS sees one (`faiss.knn_gpu`, GPU k-means).

`VectorIndex` is the persistent counterpart for "which stored images is this new image close to":
a real FAISS index (flat, or IVF-Flat for large sets) that can be written to a file and read back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

# OpenMP threads that spin while waiting hold a core the working thread needs when the machine is
# oversubscribed (shared hosts, CPU-limited containers): measured 11x slower on 2 busy cores.
# Passive waiting costs nothing noticeable here, as each FAISS call is a large matrix product. It
# only takes effect if nothing loaded FAISS's libgomp before this module; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402

DEFAULT_EXACT_MAX = 20_000
"""Brute force costs n^2 * d: measured 37 s at 50,000 x 512 on 2 busy cores against 3 s for IVF,
so exact results stay the default only where they cost a few seconds."""

DEFAULT_BATCH_SIZE = 16_384
"""Query rows per FAISS call: bounds the temporary copies (16,384 x 512 floats = 32 MiB)."""

LISTS_PER_SQRT_N = 2
"""`n_lists = 2 * sqrt(n)`: k-means and list assignment cost grow with n_lists, the products with
n / n_lists; twice sqrt(n) balances them for n_probe around 8-16."""

DEFAULT_PROBE_FRACTION = 0.008
MIN_PROBES = 16
"""Lists probed per vector: 0.8% of n_lists, at least 16 (16 of 2,000 lists at a million). Chosen
by measurement on 512-d clustered data whose neighbours sit at cosine ~0.25, barely above unrelated
vectors: 8 probes gave recall@10 0.948-0.958 at 50,000-200,000 vectors, 16 gave 0.97; on clearly
separated clusters 4 probes already give 0.9997 at a million."""

TRAINING_POINTS_PER_LIST = 40
KMEANS_ITERATIONS = 12
_FINITE_CHECK_ROWS = 65_536


METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class KnnGraph:
    """Neighbour lists: row i holds the k nearest vectors of vector (or query) i.

    `indices` are row numbers of the indexed vectors and `similarities` say how near each is,
    sorted descending: cosine similarities, or for the "euclidean" metric the negated squared
    Euclidean distances (so nearer is larger under both). In `knn_graph` a vector is never its own
    neighbour.
    """

    indices: np.ndarray
    similarities: np.ndarray
    metric: str = "cosine"

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def distances(self) -> np.ndarray:
        """Cosine distances (1 - similarity, clipped at 0 so exact duplicates are exactly 0), or
        Euclidean distances."""
        if self.metric == "euclidean":
            return np.sqrt(np.clip(-self.similarities, 0.0, None))
        return np.clip(1.0 - self.similarities, 0.0, 2.0)

    def to_sparse_distances(self) -> csr_matrix:
        """The graph in cleanlab's `knn_graph` format: a CSR matrix of cosine distances, each row
        ascending, so Datalab's checks can reuse it instead of running their own search."""
        n_rows, k = self.indices.shape
        row_pointers = np.arange(n_rows + 1) * k
        return csr_matrix(
            (self.distances().ravel(), self.indices.ravel(), row_pointers), shape=(n_rows, n_rows)
        )


def centred_unit_rows(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows minus `mean`, L2-normalised, as float32: post-ReLU features and pixel thumbnails all
    point into one orthant, where every pair looks similar; centring spreads them so that cosine
    similarity separates copies from kin."""
    centred = vectors - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.maximum(norms, 1e-12)).astype(np.float32)


def knn_graph(
    vectors: np.ndarray,
    k: int,
    *,
    exact_max: int = DEFAULT_EXACT_MAX,
    threads: int | None = None,
    use_gpu: str | bool = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    n_lists: int | None = None,
    n_probe: int | None = None,
    seed: int = 0,
    metric: str = "cosine",
    progress: Callable[[float], None] | None = None,
) -> KnnGraph:
    """The k nearest neighbours of every vector among the others, by cosine similarity or, with
    `metric="euclidean"`, by Euclidean distance.

    For cosine, `vectors` (n, d) should be L2-normalised; float32 C-contiguous input is used in
    place, anything else is converted once. k is clipped to n - 1. Exact search up to `exact_max` vectors, IVF
    beyond (see the module docstring); `n_lists` / `n_probe` override the IVF defaults. `threads`
    sets FAISS's OpenMP threads for this call only. `use_gpu`: "auto" uses a GPU when FAISS sees
    one, True requires one, False never uses one. `progress` receives the fraction done, for job
    heartbeats. Raises ValueError on NaN or infinite values.
    """
    vectors = _as_float32_matrix(vectors)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    n_vectors = vectors.shape[0]
    k = min(k, n_vectors - 1)
    if k == 0:
        return KnnGraph(
            np.empty((n_vectors, 0), np.int64), np.empty((n_vectors, 0), np.float32), metric
        )
    search = _BlockSearch(_wants_gpu(use_gpu), metric)
    report = progress or _unreported
    with _faiss_threads(threads):
        if n_vectors <= exact_max:
            indices, similarities = _exact_neighbours(
                vectors, vectors, k + 1, search, batch_size, report
            )
        else:
            n_lists, n_probe = ivf_parameters(n_vectors, n_lists, n_probe)
            indices, similarities = _ivf_neighbours(
                vectors, k + 1, search, batch_size, n_lists, n_probe, seed, report
            )
    report(1.0)
    return _drop_self(indices, similarities, k, metric)


def neighbours_in(
    database: np.ndarray,
    query_batches: Iterable[np.ndarray],
    k: int,
    *,
    exact_max: int = DEFAULT_EXACT_MAX,
    n_lists: int | None = None,
    n_probe: int | None = None,
    use_gpu: str | bool = "auto",
) -> Iterator[KnnGraph]:
    """For each batch of query vectors in turn, the k rows of `database` most similar to each
    query by cosine, all L2-normalised: for queries that are not the database's own rows (other
    views of its images, say), too many to hold at once. Exact up to `exact_max` database rows;
    beyond, the IVF partition of `knn_graph`, built once for all batches. A query may find fewer
    than k rows in its probed lists: those slots hold index -1 and similarity -inf."""
    database = _as_float32_matrix(database)
    k = min(k, database.shape[0])
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    search = _BlockSearch(_wants_gpu(use_gpu))
    partition = None
    if database.shape[0] > exact_max:
        n_lists, n_probe = ivf_parameters(database.shape[0], n_lists, n_probe)
        centroids = _train_centroids(database, n_lists, search.gpu, 0)
        primary = _assign_to_lists(database, centroids, 1, search, DEFAULT_BATCH_SIZE)[:, 0]
        partition = (centroids, n_probe, _group_by_list(primary, n_lists))
    for queries in query_batches:
        queries = _as_float32_matrix(queries)
        if partition is None:
            indices, similarities = _exact_neighbours(
                queries, database, k, search, DEFAULT_BATCH_SIZE, _unreported
            )
        else:
            centroids, n_probe, membership = partition
            probes = _assign_to_lists(queries, centroids, n_probe, search, DEFAULT_BATCH_SIZE)
            indices, similarities = _search_lists(
                queries, probes, database, membership, k, search, DEFAULT_BATCH_SIZE, _unreported
            )
        yield KnnGraph(indices, similarities)


def euclidean_neighbours(queries: np.ndarray, database: np.ndarray, k: int) -> KnnGraph:
    """The k rows of `database` nearest each query by Euclidean distance, exact: for a few
    queries against one audit's vectors, where no index is worth building."""
    queries, database = _as_float32_matrix(queries), _as_float32_matrix(database)
    k = min(k, database.shape[0])
    similarities, indices = _BlockSearch(False, "euclidean")(queries, database, k)
    return KnnGraph(indices, similarities, "euclidean")


def ivf_parameters(
    n_vectors: int, n_lists: int | None = None, n_probe: int | None = None
) -> tuple[int, int]:
    """(n_lists, n_probe) the IVF path uses for `n_vectors`, filling in the defaults, so callers
    can log or pin them."""
    n_lists = min(n_vectors, n_lists or max(1, round(LISTS_PER_SQRT_N * math.sqrt(n_vectors))))
    n_probe = min(n_lists, n_probe or max(MIN_PROBES, round(DEFAULT_PROBE_FRACTION * n_lists)))
    return n_lists, n_probe


class VectorIndex:
    """A persistent FAISS inner-product index over stored vectors, to find the stored images
    nearest a new one. Flat (exact) up to `exact_max` vectors, IVF-Flat beyond."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        exact_max: int = DEFAULT_EXACT_MAX,
        n_lists: int | None = None,
        n_probe: int | None = None,
        threads: int | None = None,
        seed: int = 0,
    ) -> VectorIndex:
        """Index `vectors` (n, d), L2-normalised. The index keeps its own copy of them."""
        vectors = _as_float32_matrix(vectors)
        n_vectors, dimension = vectors.shape
        with _faiss_threads(threads):
            if n_vectors <= exact_max:
                index: faiss.Index = faiss.IndexFlatIP(dimension)
            else:
                n_lists, n_probe = ivf_parameters(n_vectors, n_lists, n_probe)
                centroids = _train_centroids(vectors, n_lists, False, seed)
                quantizer = faiss.IndexFlatIP(dimension)
                quantizer.add(centroids)
                index = faiss.IndexIVFFlat(
                    quantizer, dimension, n_lists, faiss.METRIC_INNER_PRODUCT
                )
                index.nprobe = n_probe
            index.add(vectors)
        return cls(index)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, *, threads: int | None = None) -> KnnGraph:
        """The k most similar stored vectors of each query row (a single vector is one row).

        k is clipped to the index size. An IVF index can come back with fewer than k hits when
        the probed lists are nearly empty; those slots hold index -1 and similarity -inf.
        """
        queries = np.asarray(queries)
        queries = _as_float32_matrix(queries.reshape(1, -1) if queries.ndim == 1 else queries)
        if queries.shape[1] != self.dimension:
            raise ValueError(f"queries have dimension {queries.shape[1]}, index {self.dimension}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(k, len(self))
        with _faiss_threads(threads):
            similarities, indices = self.index.search(queries, k)
        return KnnGraph(indices, similarities)

    def save(self, path: str | os.PathLike[str]) -> None:
        faiss.write_index(self.index, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        return cls(faiss.read_index(os.fspath(path)))


class _BlockSearch:
    """Top-k search of a query block against a database block, on CPU or GPU: (similarities,
    indices) by inner product, or by Euclidean distance with squared distances negated."""

    def __init__(self, gpu: bool, metric: str = "cosine") -> None:
        self.gpu_resources = faiss.StandardGpuResources() if gpu else None
        self.euclidean = metric == "euclidean"

    def __call__(
        self, queries: np.ndarray, database: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        faiss_metric = faiss.METRIC_L2 if self.euclidean else faiss.METRIC_INNER_PRODUCT
        if self.gpu_resources is not None:
            scores, indices = faiss.knn_gpu(
                self.gpu_resources, queries, database, k, metric=faiss_metric
            )
        else:
            scores, indices = faiss.knn(queries, database, k, metric=faiss_metric)
        return (-scores if self.euclidean else scores), indices

    @property
    def gpu(self) -> bool:
        return self.gpu_resources is not None


def _exact_neighbours(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    search: _BlockSearch,
    batch_size: int,
    report: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray]:
    n_queries = queries.shape[0]
    indices = np.empty((n_queries, k), np.int64)
    similarities = np.empty((n_queries, k), np.float32)
    for start in range(0, n_queries, batch_size):
        stop = min(start + batch_size, n_queries)
        # A row slice of a C-contiguous array is contiguous: FAISS reads it without a copy.
        similarities[start:stop], indices[start:stop] = search(queries[start:stop], database, k)
        report(stop / n_queries)
    return indices, similarities


def _ivf_neighbours(
    vectors: np.ndarray,
    k: int,
    search: _BlockSearch,
    batch_size: int,
    n_lists: int,
    n_probe: int,
    seed: int,
    report: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over each vector's `n_probe` nearest lists; see the module docstring."""
    centroids = _train_centroids(vectors, n_lists, search.gpu, seed, spherical=not search.euclidean)
    report(0.1)
    probes = _assign_to_lists(vectors, centroids, n_probe, search, batch_size)
    report(0.2)
    members_start, members = _group_by_list(probes[:, 0], n_lists)
    best_indices, best_similarities = _search_lists(
        vectors,
        probes,
        vectors,
        (members_start, members),
        k,
        search,
        batch_size,
        lambda fraction: report(0.2 + 0.8 * fraction),
    )
    # Probed lists holding fewer than k vectors in all: search those rows exhaustively.
    short_rows = np.flatnonzero(best_indices[:, -1] < 0)
    for start in range(0, len(short_rows), batch_size):
        rows = short_rows[start : start + batch_size]
        best_similarities[rows], best_indices[rows] = search(vectors[rows], vectors, k)
    return best_indices, best_similarities


def _search_lists(
    queries: np.ndarray,
    probes: np.ndarray,
    database: np.ndarray,
    membership: tuple[np.ndarray, np.ndarray],
    k: int,
    search: _BlockSearch,
    batch_size: int,
    report: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each query among the database members of the lists it probes: for each list, one
    BLAS product of the list's members with every query that probes it. `membership` is the CSR
    grouping of database rows by list (`_group_by_list`); rows whose probed lists hold fewer than
    k members in all keep index -1 in their empty slots."""
    n_lists = len(membership[0]) - 1
    members_start, members = membership
    n_probe = probes.shape[1]
    probers_start, probers = _group_by_list(probes.ravel(), n_lists)
    probers //= n_probe  # flat (query, probe) position -> query row
    best_indices = np.full((queries.shape[0], k), -1, np.int64)
    best_similarities = np.full((queries.shape[0], k), -np.inf, np.float32)
    for list_id in range(n_lists):
        list_members = members[members_start[list_id] : members_start[list_id + 1]]
        if len(list_members) == 0:
            continue
        list_database = database[list_members]
        list_k = min(k, len(list_members))
        list_probers = probers[probers_start[list_id] : probers_start[list_id + 1]]
        for start in range(0, len(list_probers), batch_size):
            rows = list_probers[start : start + batch_size]
            found_similarities, found_positions = search(queries[rows], list_database, list_k)
            _merge_top_k(
                best_indices,
                best_similarities,
                rows,
                list_members[found_positions],
                found_similarities,
            )
        report((list_id + 1) / n_lists)
    return best_indices, best_similarities


def _merge_top_k(
    best_indices: np.ndarray,
    best_similarities: np.ndarray,
    rows: np.ndarray,
    found_indices: np.ndarray,
    found_similarities: np.ndarray,
) -> None:
    """Fold one list's hits into the running top-k of `rows` (distinct rows, disjoint lists)."""
    k = best_indices.shape[1]
    similarities = np.concatenate([best_similarities[rows], found_similarities], axis=1)
    indices = np.concatenate([best_indices[rows], found_indices], axis=1)
    keep = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    best_similarities[rows] = np.take_along_axis(similarities, keep, axis=1)
    best_indices[rows] = np.take_along_axis(indices, keep, axis=1)


def _train_centroids(
    vectors: np.ndarray, n_lists: int, gpu: bool, seed: int, *, spherical: bool = True
) -> np.ndarray:
    """k-means on a random sample; spherical for cosine, so centroids stay unit length."""
    n_vectors, dimension = vectors.shape
    rng = np.random.default_rng(seed)
    n_training = min(n_vectors, n_lists * TRAINING_POINTS_PER_LIST)
    sample = vectors[np.sort(rng.choice(n_vectors, n_training, replace=False))]
    kmeans = faiss.Kmeans(
        dimension,
        n_lists,
        niter=KMEANS_ITERATIONS,
        spherical=spherical,
        seed=seed,
        gpu=gpu,
        max_points_per_centroid=TRAINING_POINTS_PER_LIST,
    )
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _assign_to_lists(
    vectors: np.ndarray,
    centroids: np.ndarray,
    n_probe: int,
    search: _BlockSearch,
    batch_size: int,
) -> np.ndarray:
    """(n, n_probe) int32 list ids, nearest first; int32 halves the largest temporary."""
    probes = np.empty((vectors.shape[0], n_probe), np.int32)
    for start in range(0, vectors.shape[0], batch_size):
        stop = min(start + batch_size, vectors.shape[0])
        probes[start:stop] = search(vectors[start:stop], centroids, n_probe)[1]
    return probes


def _group_by_list(list_ids: np.ndarray, n_lists: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping: positions of list j are `order[start[j]:start[j + 1]]`, ascending."""
    order = np.argsort(list_ids, kind="stable")
    start = np.zeros(n_lists + 1, np.int64)
    np.cumsum(np.bincount(list_ids, minlength=n_lists), out=start[1:])
    return start, order


def _drop_self(indices: np.ndarray, similarities: np.ndarray, k: int, metric: str) -> KnnGraph:
    """From k + 1 hits per row keep k without the row itself.

    A vector usually finds itself, but with more than k exact duplicates the tie can push it out;
    then the (k + 1)-th hit is dropped instead.
    """
    n_rows = indices.shape[0]
    is_self = indices == np.arange(n_rows)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    # Exactly one slot per row is dropped, so the survivors reshape to (n, k) in their order.
    keep = ~is_self
    return KnnGraph(
        np.ascontiguousarray(indices[keep].reshape(n_rows, k)),
        np.ascontiguousarray(similarities[keep].reshape(n_rows, k)),
        metric,
    )


def _unreported(fraction: float) -> None:
    return None


def _as_float32_matrix(vectors: np.ndarray) -> np.ndarray:
    """C-contiguous float32 (n, d), copying only when the input is not already that."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ValueError(f"expected a non-empty (n, d) matrix, got shape {vectors.shape}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    # Chunked, so the boolean temporary stays small for millions of rows.
    for start in range(0, vectors.shape[0], _FINITE_CHECK_ROWS):
        if not np.isfinite(vectors[start : start + _FINITE_CHECK_ROWS]).all():
            raise ValueError("vectors contain NaN or infinite values")
    return vectors


def _wants_gpu(use_gpu: str | bool) -> bool:
    if use_gpu not in ("auto", True, False):
        raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu is True and not has_gpu:
        raise RuntimeError("use_gpu=True but FAISS sees no GPU (is faiss-gpu installed?)")
    return has_gpu and use_gpu is not False


@contextmanager
def _faiss_threads(threads: int | None) -> Iterator[None]:
    """FAISS's thread count is process-global: set it for one call and restore it after."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)
