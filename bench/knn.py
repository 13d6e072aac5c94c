"""Benchmark of the shared kNN graph (auditor.index.knn_graph) against cleanlab's default search.

Data: clustered unit vectors standing in for CNN embeddings: 100 coarse groups of 10 gaussian
cluster centres each (so some clusters are close, as similar classes are), points = centre +
gaussian noise of a per-cluster spread, normalised. Generated in chunks so the only large
allocation is the (n, d) float32 matrix itself.

Each measurement runs in its own subprocess so peak memory is not inherited. Peak memory is the
kernel's VmHWM (reset through /proc/self/clear_refs once the vectors exist) minus the resident
size at that moment, i.e. what the search needs on top of the raw vectors. tracemalloc and
getrusage would miss or mix in FAISS's native allocations and the data generation.

Recall@10 is measured against exact inner-product search for a random sample of queries.

    .venv/bin/python bench/knn.py                      # 100k (faiss + cleanlab) and 1M (faiss)
    .venv/bin/python bench/knn.py --sizes 100000 --no-cleanlab
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K = 10
DIMENSION = 512
N_CLUSTERS = 1_000
CLUSTERS_PER_GROUP = 10
RECALL_QUERIES = 1_000
EASY_SPREAD = (0.6, 1.2)
"""Neighbours at cosine ~0.6-0.75, well above the background: clusters are clearly separated."""
HARD_SPREAD = (1.5, 3.0)
"""Neighbours at cosine ~0.25, barely above the background: the hard case for IVF partitions."""
RESULTS = Path(__file__).resolve().parent / "results" / "knn.md"


def clustered_vectors(
    n_vectors: int,
    dimension: int = DIMENSION,
    spread: tuple[float, float] = EASY_SPREAD,
    seed: int = 0,
) -> np.ndarray:
    """Unit vectors around N_CLUSTERS centres, built chunk by chunk into one float32 matrix.

    `spread` bounds each cluster's noise norm relative to its unit centre."""
    rng = np.random.default_rng(seed)
    groups = _unit_rows(rng.standard_normal((N_CLUSTERS // CLUSTERS_PER_GROUP, dimension)))
    centres = groups[np.arange(N_CLUSTERS) // CLUSTERS_PER_GROUP]
    centres = _unit_rows(centres + 0.8 * rng.standard_normal(centres.shape) / np.sqrt(dimension))
    spreads = rng.uniform(*spread, N_CLUSTERS)
    vectors = np.empty((n_vectors, dimension), np.float32)
    chunk = 65_536
    for start in range(0, n_vectors, chunk):
        stop = min(start + chunk, n_vectors)
        clusters = rng.integers(0, N_CLUSTERS, stop - start)
        noise = rng.standard_normal((stop - start, dimension), dtype=np.float32)
        noise *= (spreads[clusters] / np.sqrt(dimension)).astype(np.float32)[:, None]
        vectors[start:stop] = _unit_rows(noise + centres[clusters].astype(np.float32))
    return vectors


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _exact_neighbours(vectors: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    import faiss

    _, indices = faiss.knn(vectors[query_rows], vectors, K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return np.array(
        [[i for i in row if i != query][:K] for row, query in zip(indices, query_rows, strict=True)]
    )


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact, strict=True)]))


def measure(method: str, n_vectors: int, threads: int, data: str, options: dict) -> dict:
    """One measurement, meant to run in a fresh process (see `main`)."""
    vectors = clustered_vectors(n_vectors, spread=HARD_SPREAD if data == "hard" else EASY_SPREAD)
    baseline_kib = _status_kib("VmRSS")
    peak_is_exact = _reset_peak_rss()

    started = time.perf_counter()
    if method == "faiss":
        from auditor.index import DEFAULT_EXACT_MAX, ivf_parameters, knn_graph

        exact_max = options.get("exact_max", DEFAULT_EXACT_MAX)
        n_lists, n_probe = ivf_parameters(n_vectors, options.get("n_lists"), options.get("n_probe"))
        graph = knn_graph(
            vectors, K, threads=threads, exact_max=exact_max, n_lists=n_lists, n_probe=n_probe
        )
        indices = graph.indices
        search = "exact" if n_vectors <= exact_max else f"IVF {n_lists} lists, {n_probe} probed"

    else:
        # What Datalab calls by default (knn_graph_helpers.set_knn_graph): sklearn
        # NearestNeighbors with the cosine metric for d > 3, then exact-duplicate correction.
        from cleanlab.internal.neighbor.knn_graph import create_knn_graph_and_index
        from threadpoolctl import threadpool_limits

        with threadpool_limits(threads):
            sparse_graph, _ = create_knn_graph_and_index(vectors, n_neighbors=K, metric=None)
        indices = sparse_graph.indices.reshape(n_vectors, K)
        search = "sklearn NearestNeighbors, cosine, brute force"
    seconds = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM") - baseline_kib

    query_rows = np.random.default_rng(1).choice(n_vectors, RECALL_QUERIES, replace=False)
    recall = _recall(indices[query_rows], _exact_neighbours(vectors, query_rows))
    raw_bytes = vectors.nbytes
    return {
        "method": method,
        "n": n_vectors,
        "data": data,
        "seconds": round(seconds, 1),
        "peak_extra_gib": round(peak_kib * 1024 / 2**30, 3),
        "raw_gib": round(raw_bytes / 2**30, 3),
        "peak_total_over_raw": round((raw_bytes + peak_kib * 1024) / raw_bytes, 2),
        "peak_is_exact": peak_is_exact,
        "recall_at_10": round(recall, 4),
        "search": search,
    }


def _run_in_subprocess(method: str, n_vectors: int, threads: int, data: str, options: dict) -> dict:
    command = [
        sys.executable,
        __file__,
        "--measure",
        json.dumps(
            {"method": method, "n": n_vectors, "threads": threads, "data": data, "options": options}
        ),
    ]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    if completed.returncode != 0:
        raise RuntimeError(f"{method} n={n_vectors} failed:\n{completed.stderr}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
    return found.group(1).strip() if found else platform.machine()


def _markdown(results: list[dict], command: str, threads: int) -> str:
    lines = [
        "# kNN graph benchmark (k = 10, d = 512)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({_cpu_model()}), "
        f"no GPU, {threads} threads; other jobs shared the machine, so times are noisy.",
        "",
        "Data: clustered unit vectors (1,000 gaussian clusters in 100 groups); easy: nearest "
        "neighbours at cosine ~0.7, hard: at ~0.25, barely above unrelated vectors. Recall@10 "
        f"against exact search on {RECALL_QUERIES:,} random queries. Peak extra memory: VmHWM "
        "over the resident size with the raw vectors loaded.",
        "",
        "| method | n | data | search | time (s) | recall@10 | raw vectors (GiB) "
        "| peak extra (GiB) | peak total / raw |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        name = "auditor knn_graph (faiss)" if result["method"] == "faiss" else "cleanlab default"
        lines.append(
            f"| {name} | {result['n']:,} | {result['data']} | {result['search']} "
            f"| {result['seconds']} | {result['recall_at_10']} | {result['raw_gib']} "
            f"| {result['peak_extra_gib']} | {result['peak_total_over_raw']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--cleanlab-max", type=int, default=100_000)
    parser.add_argument("--no-cleanlab", action="store_true")
    parser.add_argument(
        "--data",
        nargs="+",
        choices=["easy", "hard"],
        default=["easy", "hard"],
        help="cluster separation of the generated vectors (see EASY_SPREAD, HARD_SPREAD)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--n-lists", type=int)
    parser.add_argument("--n-probe", type=int)
    parser.add_argument("--exact-max", type=int)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        job = json.loads(args.measure)
        result = measure(job["method"], job["n"], job["threads"], job["data"], job["options"])
        print(json.dumps(result))
        return

    options = {
        key: value
        for key, value in (
            ("n_lists", args.n_lists),
            ("n_probe", args.n_probe),
            ("exact_max", args.exact_max),
        )
        if value is not None
    }
    results = []
    for n_vectors in args.sizes:
        for data in args.data:
            results.append(_run_in_subprocess("faiss", n_vectors, args.threads, data, options))
        # Brute force: its time and (exact) recall do not depend on the data, so run it once.
        if not args.no_cleanlab and n_vectors <= args.cleanlab_max:
            results.append(
                _run_in_subprocess("cleanlab", n_vectors, args.threads, args.data[0], {})
            )
    command = shlex.join([".venv/bin/python", "bench/knn.py", *sys.argv[1:]])
    report = _markdown(results, command, args.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
