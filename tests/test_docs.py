"""Every Python example in docs/ and the README runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def examples():
    for page in PAGES:
        for number, match in enumerate(FENCE.finditer(page.read_text()), start=1):
            yield pytest.param(match.group(1), id=f"{page.stem}-{number}")


@pytest.mark.parametrize("code", list(examples()))
def test_doc_example_runs(code, tmp_path, redis_server):
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "STEERSMAN_REDIS_URL": redis_server.url}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    # Where an example states its output in a trailing comment, hold it to that.
    for expected in re.findall(r"print\(.*\)\s+# (.+)", code):
        assert expected.strip() in done.stdout, (expected, done.stdout)
