"""Where benchmark scripts put their results: one Markdown file each under bench/results/."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, lines: list[str]) -> Path:
    """Write `lines` to bench/results/`name` and echo them, so a run shows what it recorded."""
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / name
    target.write_text(text)
    print(text)
    return target
