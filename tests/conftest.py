"""Shared fixtures: small real data, small models, and real database servers."""

from __future__ import annotations

import os
import uuid

# One intra-op thread in the tests and in every subprocess they start: on small shared
# machines two OpenMP threads competing with other processes run up to 10x slower, and one
# thread keeps the results independent of the machine's core count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import paretoskip  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REQUIRE_SERVERS = os.environ.get("PARETOSKIP_REQUIRE_SERVERS") == "1"
PG_ADMIN_URL = os.environ.get(
    "PARETOSKIP_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def digits():
    from paretoskip.data import load_dataset

    return load_dataset("digits", seed=0)


def make_tiny_model():
    """An untrained resnet20 for 8×8 single-channel digits, with reproducible weights."""
    torch.manual_seed(0)
    model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    # non-trivial batch-norm statistics so that skipping changes predictions
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def tiny_model():
    return make_tiny_model()


def _unavailable(what: str, exc: Exception):
    if REQUIRE_SERVERS:
        pytest.fail(f"{what} is required (PARETOSKIP_REQUIRE_SERVERS=1) but did not answer: {exc}")
    pytest.skip(f"{what} did not answer: {exc}")


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on the server at 127.0.0.1:5432, dropped afterwards."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover
        _unavailable("psycopg", exc)
    name = f"paretoskip_{uuid.uuid4().hex[:12]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
