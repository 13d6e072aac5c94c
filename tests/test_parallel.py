"""map_chunks: results in input order, and worker processes only where they pay for their start."""

from __future__ import annotations

import os
import time

import auditor.parallel
from auditor.parallel import map_chunks, worth_processes


def item_and_process(chunk: list[int]) -> list[tuple[int, int]]:
    return [(item, os.getpid()) for item in chunk]


def slow_item_and_process(chunk: list[int]) -> list[tuple[int, int]]:
    time.sleep(0.002 * len(chunk))
    return item_and_process(chunk)


def test_cheap_work_stays_in_this_process():
    results = list(map_chunks(item_and_process, list(range(3000)), 2))
    assert [item for item, _ in results] == list(range(3000))
    assert {pid for _, pid in results} == {os.getpid()}


def test_work_that_outlasts_the_start_goes_to_processes_in_order(monkeypatch):
    monkeypatch.setattr(auditor.parallel, "WORKER_START_SECONDS", 0.2)
    seen: list[int] = []
    results = list(
        map_chunks(
            slow_item_and_process,
            list(range(600)),
            2,
            progress=lambda done, _total: seen.append(done),
        )
    )
    assert [item for item, _ in results] == list(range(600))
    assert len({pid for _, pid in results} - {os.getpid()}) >= 1
    assert seen == sorted(seen) and seen[-1] == 600


def test_worth_processes_counts_their_start():
    start = auditor.parallel.WORKER_START_SECONDS
    assert worth_processes(10 * start, 2)
    assert not worth_processes(start, 2)  # half the work saved, less than the start
    assert not worth_processes(100 * start, 1)
