"""Test setup and the helpers tests share: 8 fake CPU devices (set before anything imports jax), the tiny run on the
bundled data (its config, its command line, what it wrote), random model params, float32 tolerances, the Modalities
venv, and the kill -9 drill (which bench/drill_kill.py runs longer)."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

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

import ml_dtypes
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"
TOKENIZER = REPO / "data" / "tokenizer" / "tokenizer.json"
RAW = REPO / "data" / "raw"

# The Modalities 0.5.0 venv (torch 2.13.0, transformers 4.x) that peer comparisons run in; tests needing it skip without
MODALITIES_PYTHON = REPO / ".bench_cache" / "modalities-venv" / "bin" / "python"
needs_modalities = pytest.mark.skipif(
    not MODALITIES_PYTHON.exists(), reason=f"Modalities venv absent ({MODALITIES_PYTHON})"
)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


# Tolerances
# ------------------------------------------------------------------------------------------------------------------


def atol_for(scale: float, depth: int, dtype=np.float32) -> float:
    """An absolute tolerance for results of magnitude `scale` that went through sums of `depth` terms in `dtype`,
    computed in another order (another CPU's vector width, a transposed matmul, another mesh, another framework): such
    rounding errors grow like sqrt(depth) units in the last place of `scale`; 8x margin for the tail of their
    distribution and for the few layers they pass through. Not the value one CPU happened to give."""
    return 8.0 * math.sqrt(depth) * float(ml_dtypes.finfo(dtype).eps) * float(scale)


def assert_close(actual, desired, depth: int, dtype=np.float32, scale: float | None = None) -> None:
    """|actual - desired| <= atol_for(max |desired| (or `scale`), depth, dtype) everywhere (see atol_for)."""
    desired = np.asarray(desired, np.float64)
    scale = float(np.max(np.abs(desired))) if scale is None else scale
    np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol=0, atol=atol_for(scale, depth, dtype))


# The tiny run (configs/tiny.py on the bundled RedPajama .pbin files, on the 8 fake devices)
# ------------------------------------------------------------------------------------------------------------------

TRAIN_PBIN = str(TEST_DATA / "redpajama_v2_samples_512_train.pbin")
VAL_PBIN = str(TEST_DATA / "redpajama_v2_samples_512_test.pbin")
TINY = str(REPO / "configs" / "tiny.py")
STEPS = 6  # 8 seqs x 64 tokens per step, evaluations at steps 3 and 6, checkpoints every 2


def tiny_config(**overrides):
    """configs/tiny.py on the bundled data, short and fast, with `overrides` as {"section.key": value}."""
    from jaxgpt.config import load_config_file

    cfg = load_config_file(TINY)
    cfg.data.train_path = TRAIN_PBIN
    cfg.data.val_path = VAL_PBIN
    cfg.train.num_steps = STEPS
    cfg.train.micro_batch_size = 1  # 8 seqs * 64 tokens = 512 tokens/step on the 8 fake devices
    cfg.train.log_every = 1
    cfg.train.eval_every = 3
    cfg.train.eval_steps = 2
    cfg.checkpoint.every = 2
    cfg.wandb.mode = "disabled"
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    return cfg


def tiny_cli(workdir, *overrides, stop_after=None) -> list[str]:
    """The tiny run as a `python -m jaxgpt.train` command line."""
    cmd = [sys.executable, "-m", "jaxgpt.train", f"--config={TINY}", f"--workdir={workdir}"]
    cmd += [
        f"--config.data.train_path={TRAIN_PBIN}",
        f"--config.data.val_path={VAL_PBIN}",
        f"--config.train.num_steps={STEPS}",
        "--config.train.log_every=1",
        "--config.train.eval_every=3",
        "--config.train.eval_steps=2",
        "--config.wandb.mode=disabled",
        "--config.train.micro_batch_size=1",
        *overrides,
    ]
    if stop_after is not None:
        cmd.append(f"--stop_after={stop_after}")
    return cmd


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir):
    return {e["step"]: e["loss"] for e in read_metrics(workdir) if e["event"] == "train"}


def losses_in_order(workdir):
    """(event, step, loss) of every metrics.jsonl line: what a resumed run must reproduce exactly, evals included."""
    return [(e["event"], e["step"], e.get("loss", e.get("eval_loss"))) for e in read_metrics(workdir)]


def checkpoint_steps(workdir):
    from jaxgpt import checkpoint, rundir

    return checkpoint.Checkpointer(rundir.checkpoint_dir(workdir), every=1, keep=9).all_steps()


def final_params(workdir):
    import jax
    from flax import nnx

    from jaxgpt import checkpoint

    model, _ = checkpoint.load(workdir)
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def assert_trees_equal(a, b, depth: int | None = None):
    """Equal trees, bit for bit; or, with `depth`, each leaf within assert_close of its counterpart."""
    import jax

    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if depth is None:
            np.testing.assert_array_equal(x, y)
        else:
            assert_close(x, y, depth)


# Models with random parameters
# ------------------------------------------------------------------------------------------------------------------


def random_params(cfg, seed: int) -> dict[str, np.ndarray]:
    """A GPT's init as flat params, with norm weights 1 + N(0, 0.2) and biases N(0, 0.1): nothing a mapping could get
    away with."""
    from flax import nnx

    from jaxgpt.interop.params import flat_params
    from jaxgpt.model import GPT

    flat = flat_params(nnx.state(GPT(cfg, rngs=nnx.Rngs(seed)), nnx.Param))
    rng = np.random.default_rng(seed)
    for key, value in flat.items():
        if key.endswith(".bias"):
            flat[key] = rng.normal(0.0, 0.1, value.shape).astype(np.float32)
        elif "norm" in key:
            flat[key] = (1.0 + rng.normal(0.0, 0.2, value.shape)).astype(np.float32)
    return flat


def model_with(cfg, flat: dict[str, np.ndarray]):
    """A GPT of options `cfg` holding the flat params."""
    from flax import nnx

    from jaxgpt.interop.params import with_params
    from jaxgpt.model import GPT

    model = GPT(cfg, rngs=nnx.Rngs(0))
    nnx.update(model, with_params(nnx.state(model, nnx.Param), flat))
    return model


# The kill -9 drill
# ------------------------------------------------------------------------------------------------------------------


def logged_step(workdir: str) -> int:
    """The newest step metrics.jsonl holds (a half-written last line is skipped, as the run itself does)."""
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return 0
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return max(steps, default=0)


def checkpoints_on_disk(workdir: str) -> tuple[list[int], list[str]]:
    """(complete steps, Orbax temporary directories of saves in flight)."""
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if ".orbax-checkpoint-tmp" in n)


def drill(
    cmd: list[str],
    workdir: str,
    kills: int,
    rng,
    max_delay: float,
    env: dict,
    timeout: float = 300,
    span: tuple[int, int] = (2, 6),
) -> list[dict]:
    """Kills the run `kills` times (restarting it each time) a random 0..max_delay seconds after it logged a random
    span[0]..span[1] steps past its resume point, then lets it finish; one record per kill."""
    records = []
    while len(records) < kills:
        resumed_at = max(checkpoints_on_disk(workdir)[0], default=0)
        target = resumed_at + rng.randint(*span)
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and logged_step(workdir) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                time.sleep(rng.uniform(0.0, max_delay))
            if proc.poll() is not None:  # finished (or failed) before the kill: no kill to count
                err.seek(0)
                if proc.returncode:
                    raise RuntimeError(f"the run failed with {proc.returncode}: {err.read()[-3000:].decode()}")
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        steps, in_flight = checkpoints_on_disk(workdir)
        records.append(
            {
                "kill": len(records) + 1,
                "resumed_at": resumed_at,
                "logged": logged_step(workdir),
                "newest_checkpoint": max(steps, default=0),
                "inside_save": bool(in_flight),
            }
        )
    subprocess.run(
        cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout
    )
    return records


# The longest test files, longest first. `pytest -n 2 --dist loadfile` hands files to the two workers in collection
# order; alphabetically these came last, so one worker ran them alone at the end (CI: minutes of one idle core).
# Starting with them lets the many short files fill in behind: the same tests, in about the total work / 2.
LONGEST_FIRST = (
    "test_train.py",
    "test_tutorial_instruction_tuning.py",
    "test_reliability.py",
    "test_schedules.py",
    "test_generate.py",
    "test_mixture.py",
    "test_train_step.py",
    "test_sft_train.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: in-file order kept
