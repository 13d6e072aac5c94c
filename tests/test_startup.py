"""What the command line and the decoding workers import at start-up.

multiprocessing's spawn re-imports the main script in every worker process, so when `auditor` runs
from its console script each decoding worker imports `auditor.cli`, then the worker function's
module. Either pulling in torch, cleanlab or scikit-learn cost seconds per worker (on two cores,
7.6 s of the demo's 10.5 s embed stage), and `auditor --help` took 9 s.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "cleanlab", "sklearn", "faiss")


def heavy_modules_after_import(module: str) -> list[str]:
    code = (
        f"import json, sys; import {module}; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "module",
    [
        "auditor.cli",  # re-imported in every spawned worker of a console-script run
        "auditor.embed.small_images",  # pixel decoding workers
        "auditor.ingest.decode",  # ingest decoding workers
    ],
)
def test_imports_without_the_heavy_libraries(module):
    assert heavy_modules_after_import(module) == []


def test_help_lists_the_commands_without_loading_the_pipeline():
    code = (
        "import sys; from typer.testing import CliRunner; from auditor.cli import app; "
        "result = CliRunner().invoke(app, ['--help']); "
        "print(result.exit_code, 'demo' in result.output, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["0", "True", "False"]
