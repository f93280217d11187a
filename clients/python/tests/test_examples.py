"""The quickstart of the repository README.md, run as it is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import Stack, require

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart(stack: Stack) -> None:
    require(stack, "datalayer.ratelimit.v1.RateLimitService")
    require(stack, "datalayer.cache.v1.CacheService")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        env={**os.environ, "DATALAYER_ADDR": stack.addr},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.splitlines() == [
        "allowed=True remaining=9",
        "computing the report",
        "42 trades today",
        "42 trades today",
        "bad request: key: must not be empty",
    ], out


def test_readme_shows_the_quickstart_verbatim() -> None:
    doc = (EXAMPLES.parents[2] / "README.md").read_text()
    block = doc.split("```python quickstart\n", 1)[1].split("```\n", 1)[0]
    assert block == (EXAMPLES / "quickstart.py").read_text()
