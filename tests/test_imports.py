"""Importing the command line (and the torch-free parts of the package) must not import torch:
``paretoskip --help`` answers before any heavy import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "optuna", "pymoo", "numpy")


def _modules_after(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import paretoskip.cli",
        "import paretoskip",
        "import paretoskip.cli; paretoskip.cli.build_parser()",
        "from paretoskip import ConfigError, __version__",
        "import paretoskip.space",
    ],
)
def test_light_imports_do_not_import_torch(code):
    assert _modules_after(code) == []


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom paretoskip.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "try:\n    main(['export', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
    )
    assert _modules_after(code) == []


def test_lazy_attributes_still_resolve():
    # the public names import their module on first use
    code = "import paretoskip\nm = paretoskip.create_model\nS = paretoskip.SkipSpace\nimport paretoskip.models"
    assert "torch" in _modules_after(code)
    import paretoskip

    assert set(paretoskip.__all__) <= set(dir(paretoskip))
    for name in paretoskip.__all__:
        assert getattr(paretoskip, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        paretoskip.nope  # noqa: B018
