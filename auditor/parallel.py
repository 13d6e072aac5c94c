"""Chunked work over worker processes, in order, with progress: decoding is CPU-bound Python."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_CHUNK = 64
# Starting worker processes costs seconds (interpreter, numpy, Pillow, imagehash imports); below
# this many items one process finishes sooner.
MIN_PARALLEL_ITEMS = 1000


def map_chunks(
    function: Callable[..., list[R]],
    items: Sequence[T],
    workers: int,
    *args: Any,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[R]:
    """Yield `function(chunk, *args)` results item by item, in input order.

    `function` must be importable by worker processes (module level). One worker runs inline. The
    pool uses spawn, not fork: the parent may hold database connections and torch thread pools.
    """
    if len(items) < MIN_PARALLEL_ITEMS:
        workers = 1
    size = max(1, min(MAX_CHUNK, -(-len(items) // (max(1, workers) * 4))))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    workers = min(workers, len(chunks))
    done = 0

    def advance(results: list[R]) -> list[R]:
        nonlocal done
        done += len(results)
        if progress:
            progress(done, len(items))
        return results

    if workers <= 1:
        for chunk in chunks:
            yield from advance(function(chunk, *args))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(function, chunk, *args) for chunk in chunks]
        for future in futures:
            yield from advance(future.result())
