"""Test setup: 8 fake CPU devices, set before anything imports jax."""

import os
import pathlib
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_SILENT", "true")
# Many tests (and the CLI subprocesses they start, which inherit these) compile the same tiny step: a persistent
# compilation cache shared by all of them turns every compile after the first into a disk read.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"jaxgpt-test-xla-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"
TOKENIZER = REPO / "data" / "tokenizer" / "tokenizer.json"
RAW = REPO / "data" / "raw"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO
