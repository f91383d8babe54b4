"""The README's Python examples run as written, in order, in a fresh directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert any("AdaptiveModel" in b for b in blocks) and any("make_skippable" in b for b in blocks)


@pytest.mark.slow
def test_readme_python_examples_run_as_written(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for i, block in enumerate(python_blocks()):
        (tmp_path / f"example{i}.py").write_text(block)
        r = subprocess.run(
            [sys.executable, f"example{i}.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=1800,
            env=env,
        )
        assert r.returncode == 0, f"README example {i} failed:\n{block}\n{r.stderr[-3000:]}"
