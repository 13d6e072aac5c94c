import numpy as np
import pytest

# faiss through auditor.index, which sets its OpenMP wait policy before loading it.
from auditor.index import KnnGraph, VectorIndex, faiss, knn_graph, neighbours_in


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def random_unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, d)))


def clustered_unit_vectors(n: int, d: int, n_clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((n_clusters, d)))
    clusters = rng.integers(0, n_clusters, n)
    return unit_rows(centres[clusters] + 0.5 * rng.standard_normal((n, d)) / np.sqrt(d))


def brute_force(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarities = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    np.fill_diagonal(similarities, -np.inf)
    order = np.argsort(-similarities, axis=1)[:, :k]
    return order, np.take_along_axis(similarities, order, axis=1)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact, strict=True)])
    )


def assert_valid_graph(graph: KnnGraph, n: int, k: int) -> None:
    assert graph.indices.shape == graph.similarities.shape == (n, k)
    assert graph.indices.dtype == np.int64 and graph.similarities.dtype == np.float32
    assert not (graph.indices == np.arange(n)[:, None]).any(), "a vector is its own neighbour"
    assert ((graph.indices >= 0) & (graph.indices < n)).all()
    assert (np.diff(graph.similarities, axis=1) <= 1e-6).all(), "not sorted descending"
    for row in graph.indices:
        assert len(set(row)) == k, "a neighbour repeats"


def test_exact_graph_equals_brute_force():
    vectors = random_unit_vectors(600, 16)
    graph = knn_graph(vectors, 7)
    expected_indices, expected_similarities = brute_force(vectors, 7)
    assert_valid_graph(graph, 600, 7)
    np.testing.assert_array_equal(graph.indices, expected_indices)
    np.testing.assert_allclose(graph.similarities, expected_similarities, atol=1e-5)


@pytest.mark.parametrize("exact_max", [10_000, 100], ids=["exact", "ivf"])
def test_self_is_excluded_among_exact_duplicates(exact_max):
    vectors = random_unit_vectors(1_500, 16, seed=1)
    vectors[100:120] = vectors[100]  # 20 copies: more than k + 1, so self can lose the tie
    vectors[200:203] = vectors[200]  # 3 copies: fewer than k
    graph = knn_graph(vectors, 5, exact_max=exact_max, n_lists=30, n_probe=30)
    assert_valid_graph(graph, 1_500, 5)
    assert set(graph.indices[100:120].ravel()) <= set(range(100, 120))
    np.testing.assert_allclose(graph.similarities[100:120], 1.0, atol=1e-5)
    for row in range(200, 203):
        assert set(graph.indices[row, :2]) == set(range(200, 203)) - {row}
        assert graph.distances()[row, :2] == pytest.approx([0.0, 0.0], abs=1e-5)


def test_ivf_graph_reaches_high_recall():
    vectors = clustered_unit_vectors(20_000, 32, n_clusters=200)
    graph = knn_graph(vectors, 10, exact_max=1_000, threads=2)
    assert_valid_graph(graph, 20_000, 10)
    rows = np.random.default_rng(2).choice(20_000, 500, replace=False)
    _, exact = faiss.knn(vectors[rows], vectors, 11, metric=faiss.METRIC_INNER_PRODUCT)
    exact_without_self = np.array(
        [[i for i in r if i != q][:10] for r, q in zip(exact, rows, strict=True)]
    )
    assert recall(graph.indices[rows], exact_without_self) >= 0.95
    expected = np.einsum("nd,nkd->nk", vectors[rows], vectors[graph.indices[rows]])
    np.testing.assert_allclose(graph.similarities[rows], expected, atol=1e-5)


def test_ivf_falls_back_to_exact_search_when_probed_lists_are_too_small():
    vectors = random_unit_vectors(400, 8, seed=3)
    graph = knn_graph(vectors, 20, exact_max=10, n_lists=100, n_probe=1)
    assert_valid_graph(graph, 400, 20)


def test_k_is_clipped_to_the_other_vectors():
    vectors = random_unit_vectors(4, 8)
    graph = knn_graph(vectors, 10)
    assert_valid_graph(graph, 4, 3)
    for row, neighbours in enumerate(graph.indices):
        assert set(neighbours) == {0, 1, 2, 3} - {row}


def test_a_single_vector_has_no_neighbours():
    graph = knn_graph(random_unit_vectors(1, 8), 10)
    assert graph.indices.shape == graph.similarities.shape == (1, 0)
    assert graph.to_sparse_distances().shape == (1, 1)


def test_float64_and_non_contiguous_input_give_the_same_graph():
    wide = random_unit_vectors(300, 32)
    vectors = unit_rows(wide[:, ::2])
    reference = knn_graph(np.ascontiguousarray(vectors), 5)
    strided = np.zeros((300, 32), np.float64)
    strided[:, ::2] = vectors
    for variant in (vectors.astype(np.float64), strided[:, ::2], np.asfortranarray(vectors)):
        graph = knn_graph(variant, 5)
        np.testing.assert_array_equal(graph.indices, reference.indices)


def test_zero_vectors_get_neighbours_at_similarity_zero():
    vectors = random_unit_vectors(50, 8)
    vectors[[3, 7]] = 0.0
    graph = knn_graph(vectors, 4)
    assert_valid_graph(graph, 50, 4)
    np.testing.assert_array_equal(graph.similarities[[3, 7]], 0.0)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_values_are_rejected(bad_value):
    vectors = random_unit_vectors(20, 8)
    vectors[5, 2] = bad_value
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn_graph(vectors, 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        VectorIndex.build(vectors)


@pytest.mark.parametrize(
    "arguments",
    [
        {"vectors": np.ones(8, np.float32), "k": 2},
        {"vectors": np.ones((0, 8), np.float32), "k": 2},
        {"vectors": np.ones((5, 8), np.float32), "k": 0},
        {"vectors": np.ones((5, 8), np.float32), "k": 2, "use_gpu": "sometimes"},
        {"vectors": np.ones((5, 8), np.float32), "k": 2, "threads": 0},
    ],
)
def test_invalid_arguments_are_rejected(arguments):
    with pytest.raises(ValueError):
        knn_graph(**arguments)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="a GPU is present")
def test_requiring_a_gpu_without_one_fails_clearly():
    with pytest.raises(RuntimeError, match="no GPU"):
        knn_graph(random_unit_vectors(10, 4), 2, use_gpu=True)


def test_thread_count_is_restored_and_progress_is_reported():
    before = faiss.omp_get_max_threads()
    fractions: list[float] = []
    knn_graph(
        random_unit_vectors(2_000, 8), 5, threads=1, batch_size=300, progress=fractions.append
    )
    assert faiss.omp_get_max_threads() == before
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 2


def test_sparse_distances_match_cleanlab_layout():
    vectors = random_unit_vectors(100, 8)
    graph = knn_graph(vectors, 4)
    sparse = graph.to_sparse_distances()
    assert sparse.shape == (100, 100) and sparse.nnz == 400
    rows = sparse.data.reshape(100, 4)
    np.testing.assert_array_equal(sparse.indices.reshape(100, 4), graph.indices)
    np.testing.assert_allclose(rows, 1.0 - graph.similarities, atol=1e-6)
    assert (np.diff(rows, axis=1) >= 0).all()


@pytest.mark.parametrize("exact_max", [10_000, 1_000], ids=["flat", "ivf"])
def test_vector_index_save_and_load_round_trip(tmp_path, exact_max):
    vectors = clustered_unit_vectors(3_000, 16, n_clusters=30)
    index = VectorIndex.build(vectors, exact_max=exact_max)
    assert len(index) == 3_000 and index.dimension == 16
    queries = clustered_unit_vectors(40, 16, n_clusters=30, seed=5)
    before = index.search(queries, 5)

    path = tmp_path / "vectors.faiss"
    index.save(path)
    loaded = VectorIndex.load(path)
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.similarities, before.similarities)

    own = loaded.search(vectors[123], 1)  # a single vector is one query row
    assert own.indices.tolist() == [[123]]


def test_vector_index_search_edge_cases(tmp_path):
    index = VectorIndex.build(random_unit_vectors(3, 8))
    assert index.search(random_unit_vectors(2, 8), 10).indices.shape == (2, 3)
    with pytest.raises(ValueError, match="dimension"):
        index.search(random_unit_vectors(2, 4), 1)
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "missing.faiss")


@pytest.mark.parametrize("exact_max", [10_000, 100])
def test_euclidean_graph_matches_brute_force_distances(exact_max):
    rng = np.random.default_rng(5)
    # Lengths differ by a factor of ten: cosine similarity would ignore that, Euclidean must not.
    vectors = (rng.normal(size=(400, 6)) * rng.uniform(1, 10, size=(400, 1))).astype(np.float32)
    graph = knn_graph(vectors, 5, metric="euclidean", exact_max=exact_max, n_lists=8, n_probe=8)
    assert_valid_graph(graph, 400, 5)
    squared = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(squared, np.inf)
    expected = np.sort(np.sqrt(squared), axis=1)[:, :5]
    assert graph.metric == "euclidean"
    assert np.allclose(graph.distances(), expected, rtol=1e-4, atol=1e-2)
    assert np.allclose(
        np.sqrt(squared[np.arange(400)[:, None], graph.indices]), expected, atol=1e-2
    )


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric"):
        knn_graph(random_unit_vectors(10, 4), 2, metric="manhattan")


@pytest.mark.parametrize("exact_max", [10_000, 100], ids=["exact", "ivf"])
def test_neighbours_in_searches_each_batch_against_the_database(exact_max):
    database = clustered_unit_vectors(2_000, 32, 20, seed=4)
    rng = np.random.default_rng(5)
    sources = rng.integers(0, len(database), 300)
    queries = unit_rows(database[sources] + 0.01 * rng.standard_normal((300, 32)))
    batches = list(
        neighbours_in(database, [queries[:120], queries[120:]], 3, exact_max=exact_max, n_probe=4)
    )
    assert [graph.indices.shape for graph in batches] == [(120, 3), (180, 3)]
    found = np.concatenate([graph.indices for graph in batches])
    # Each query is its source row, barely moved: the source must come first.
    np.testing.assert_array_equal(found[:, 0], sources)
    expected = queries @ database.T
    top = np.concatenate([graph.similarities for graph in batches])[:, 0]
    np.testing.assert_allclose(top, expected[np.arange(300), sources], atol=1e-5)
    assert (np.diff(np.concatenate([g.similarities for g in batches]), axis=1) <= 1e-6).all()
