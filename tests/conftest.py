"""Test setup: 8 fake CPU devices, set before anything imports jax."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"
TOKENIZER = REPO / "data" / "tokenizer" / "tokenizer.json"
RAW = REPO / "data" / "raw"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO
