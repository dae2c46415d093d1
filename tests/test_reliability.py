"""What goes wrong on real machines: damaged checkpoints, a full disk, operator mistakes, and a new user's first run.

Each fault must end in one clear line (or a warning and an exact resume), never in a traceback, and leave nothing
half-written that a later run would pick up.
"""

import contextlib
import glob
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
from conftest import (
    REPO,
    STEPS,
    TEST_DATA,
    assert_trees_equal,
    drill,
    final_params,
    losses_in_order,
    tiny_cli,
    tiny_config,
)

from jaxgpt import checkpoint, rundir, sharding, train
from jaxgpt.data.loader import pipeline
from jaxgpt.errors import CheckpointError, ConfigError
from jaxgpt.train import resume
from jaxgpt.train.loop import eval_schedule
from jaxgpt.train.setup import setup
from jaxgpt.train.state import StateLayout, StepConfig


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted float32 run (tiny.py's dtype) keeping the checkpoints of steps 3 to 6, and what it printed."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        train.run(tiny_config(**{"checkpoint.every": 1, "checkpoint.keep": 4}), workdir)
    return workdir, out.getvalue()


def _largest(pattern):
    return max(glob.glob(pattern, recursive=True), key=os.path.getsize)


def damage(step_dir, how):
    """The three ways a committed step goes bad after Orbax renamed it into place; returns the warning's reason."""
    if how == "truncated":
        victim = _largest(f"{step_dir}/params/**/d/*")
        os.truncate(victim, os.path.getsize(victim) // 2)  # a partial copy
        return r"OUT_OF_RANGE: Error reading .* in OCDBT database at local file .*/params/"
    if how == "deleted":
        os.remove(_largest(f"{step_dir}/opt_state/**/d/*"))
        return r"[A-Z_]+: Error reading .* in OCDBT database at local file .*/opt_state/"
    os.remove(f"{step_dir}/{checkpoint.COMMIT_MARKER}")  # "uncommitted": a copy that stopped before the marker
    return re.escape(f"{os.path.basename(step_dir)} has no {checkpoint.COMMIT_MARKER}")


def test_damaged_newest_checkpoints_fall_back_to_the_newest_intact_one(reference, tmp_path):
    ref, _ = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref, workdir)
    ckpt_dir = rundir.checkpoint_dir(workdir)
    damaged = {
        step: damage(f"{ckpt_dir}/{step}", how) for step, how in ((6, "truncated"), (5, "deleted"), (4, "uncommitted"))
    }
    # compute_dtype "auto" on CPU is float32: it resumes the float32 run, to its numbers.
    with pytest.warns(UserWarning) as warned:
        train.run(tiny_config(**{"train.compute_dtype": "auto"}), workdir)
    messages = [str(w.message) for w in warned if "damaged checkpoint" in str(w.message)]
    assert len(messages) == 3, messages
    for message, (step, reason) in zip(messages, damaged.items()):
        assert re.fullmatch(
            rf"{ckpt_dir}/{step}: damaged checkpoint \({reason}.*\); falling back to step {step - 1}", message
        ), message
    assert losses_in_order(workdir) == losses_in_order(ref)  # steps 4-6 and the eval at 6 again, bit for bit
    assert_trees_equal(final_params(workdir), final_params(ref))
    # The damaged steps are kept for inspection, out of Orbax's view; steps 4 and 6 (checkpoint.every=2) saved again.
    assert sorted(os.listdir(ckpt_dir)) == ["3", "4", "4.damaged", "5.damaged", "6", "6.damaged"]


def test_every_landed_save_hands_its_freed_host_memory_back(tmp_path, monkeypatch):
    # without the trim, glibc kept each asynchronous save's freed buffers: ~30 MiB of RSS per save (bench/memory.py)
    assert checkpoint._malloc_trim() is not None  # glibc, as on the CI and dev boxes: the trim is real there
    landed = []
    monkeypatch.setattr(checkpoint, "release_freed_memory", lambda: landed.append(1))
    train.run(tiny_config(**{"checkpoint.every": 2, "train.eval_every": 100}), str(tmp_path / "run"))
    assert len(landed) == STEPS // 2  # the saves of steps 2, 4 and 6, each once it was on disk


def test_load_names_the_step_it_loaded_and_a_damaged_explicit_step_is_an_error(reference, tmp_path, capsys):
    ref, _ = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref, workdir)
    ckpt_dir = rundir.checkpoint_dir(workdir)
    damage(f"{ckpt_dir}/6", "truncated")
    with pytest.warns(UserWarning, match=rf"{ckpt_dir}/6: damaged checkpoint .*; falling back to step 5"):
        model, cfg = checkpoint.load(workdir)
    assert f"jaxgpt: loaded step 5 of {ckpt_dir}" in capsys.readouterr().err
    assert sorted(os.listdir(ckpt_dir)) == ["3", "4", "5", "6"]  # a reader moves nothing
    with pytest.raises(CheckpointError, match=rf"{ckpt_dir}/6: cannot restore it: .*OUT_OF_RANGE"):
        checkpoint.load(workdir, step=6)
    damage(f"{ckpt_dir}/5", "uncommitted")
    with pytest.raises(CheckpointError, match=r"5: cannot restore it: .*5 has no commit_success.txt"):
        checkpoint.load(workdir, step=5)
    for step in (3, 4):
        damage(f"{ckpt_dir}/{step}", "truncated")  # a reader reads only the params: damage those
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"every checkpoint is damaged"):
        checkpoint.load(workdir)


def test_auto_compute_dtype_is_float32_on_cpu_and_named_in_the_banner_and_record(reference):
    ref, printed = reference
    step_cfg = StepConfig.from_config(tiny_config(**{"train.compute_dtype": "auto"}), num_steps=2)
    assert step_cfg.resolved("cpu").compute_dtype == "float32"
    assert step_cfg.resolved("gpu").compute_dtype == step_cfg.resolved("tpu").compute_dtype == "bfloat16"
    with pytest.raises(ValueError, match="resolved only on a platform"):
        _ = step_cfg.dtype
    layout = StateLayout.build(step_cfg, sharding.make_mesh(1, -1, 1))
    assert layout.cfg.compute_dtype == "float32"
    assert "compute: float32 on cpu" in printed
    with open(os.path.join(ref, "config.json")) as f:
        assert json.load(f)["derived"]["compute_dtype"] == "float32"
    # The run's config holds the dtype "auto" picked: checkpoints record it and a resume compares it.
    auto = setup(tiny_config(**{"train.compute_dtype": "auto"}), str(ref), stop_after=None)
    assert auto.cfg.train.compute_dtype == "float32"
    saved = json.loads(json.dumps(auto.cfg.to_dict()))
    saved["train"]["compute_dtype"] = "bfloat16"  # a checkpoint of a GPU run
    with pytest.raises(CheckpointError, match="train.compute_dtype: checkpoint 'bfloat16' vs now 'float32'"):
        resume.check_resumable(saved, auto.stream, auto.cfg, auto.stream, "ckpt", 2)


def test_the_banner_plans_the_evaluation_cost_and_the_bar_shows_evaluation(reference, tmp_path):
    _, printed = reference
    assert (
        "evaluation: 2 batches of 8 seqs (1,024 tokens, the forward passes of 2.0 steps' tokens) every 3 steps"
        " and at the last: 2 in all" in printed
    )
    assert "eval at step 3" in printed and "eval at step 6" in printed  # the evaluation's own progress bar
    full = setup(tiny_config(**{"train.eval_steps": 0}), str(tmp_path / "run"), stop_after=None)
    sharding_ = sharding.batch_sharding(full.mesh)
    with pipeline.eval_batches(full.val_src, global_batch_size=full.plan.eval_batch, sharding=sharding_) as it:
        assert full.eval_batches == sum(1 for _ in it)  # the planned count is what a full pass reads
    assert "train.eval_steps=N caps it" in eval_schedule(full).cost(full.plan.tokens_per_step, 64)


def test_a_missing_pbin_names_the_commands_that_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # where a fresh clone runs it; data/raw holds the bundled samples
    missing = str(tmp_path / "redpajama_v2_samples_512_test.pbin")
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: no such file (data.train_path)")) as error:
        train.run(tiny_config(**{"data.train_path": missing}), str(tmp_path / "run"))
    message = str(error.value)
    assert "`bash getting_started.sh`" in message
    commands = re.findall(r"`([^`]+)`", message)[-1]  # the two tools commands: they must make exactly that file
    subprocess.run(
        commands.replace("python ", f"{sys.executable} "), shell=True, check=True, capture_output=True, timeout=120
    )
    with open(missing, "rb") as made, open(TEST_DATA / "redpajama_v2_samples_512_test.pbin", "rb") as golden:
        assert made.read() == golden.read()
    other = str(tmp_path / "mine.pbin")
    with pytest.raises(ConfigError, match=r"mine.pbin: no such file \(data.val_path\); pack it from your JSONL"):
        train.run(tiny_config(**{"data.val_path": other}), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


@contextlib.contextmanager
def tmpfs(path, options):
    """A small file system of our own (CI runs as root); skips where mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path]).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True)


def _one_line_error(proc, message):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    return errors[0]


def test_a_full_disk_during_a_save_is_one_error_and_leaves_only_complete_checkpoints(reference, tmp_path):
    ref, _ = reference
    # 60 MiB: the run's files and the first checkpoint (36 MiB) fit, the second does not.
    with tmpfs(str(tmp_path / "disk"), "size=60m") as disk:
        workdir = os.path.join(disk, "run")
        proc = subprocess.run(
            tiny_cli(workdir, "--config.checkpoint.every=2"), cwd=REPO, capture_output=True, text=True, timeout=300
        )
        # Step 4's save fills the disk; Orbax may report it at step 6's save, after that one failed too.
        line = _one_line_error(proc, f"error: {workdir}/checkpoints: saving step ")
        assert re.search(
            r"saving step [46] failed: no space left on device.*the newest complete checkpoint is step 2$", line
        ), line
        assert os.listdir(rundir.checkpoint_dir(workdir)) == ["2"]  # no partial step 4 a resume could pick
        subprocess.run(["mount", "-o", "remount,size=200m", disk], check=True)  # space freed: the resume is exact
        train.run(tiny_config(), workdir)
        assert losses_in_order(workdir) == losses_in_order(ref)


def test_operator_mistakes_are_one_line_errors_that_write_nothing(tmp_path):
    with tmpfs(str(tmp_path / "ro"), "ro,size=1m") as parent:
        with pytest.raises(ConfigError, match=r"cannot be used as the run directory \(Read-only file system\)"):
            train.run(tiny_config(), os.path.join(parent, "run"))
    (tmp_path / "file").write_text("notes")
    with pytest.raises(ConfigError, match=r"file: cannot be used as the run directory \(File exists\)"):
        train.run(tiny_config(), str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "notes"
    # A run holds the workdir (this test process, through the lock train.run takes): a second one, started from the
    # command line, is refused in one line (the command turns each jaxgpt error into one), writing nothing.
    workdir = tmp_path / "run"
    workdir.mkdir()
    with rundir.exclusive(workdir):
        proc = subprocess.run(tiny_cli(workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
        _one_line_error(proc, f"{workdir}: another run is writing this workdir (pid {os.getpid()} on")
        assert os.listdir(workdir) == ["run.lock"]


def test_three_kill9s_at_random_moments_end_as_the_uninterrupted_run(reference, tmp_path):
    """The drill of bench/drill_kill.py, 3 kills of a 6-step run (the full drill: 20 kills, BENCHMARKS.md)."""
    ref, _ = reference
    workdir = str(tmp_path / "killed")
    records = drill(
        tiny_cli(workdir, "--config.checkpoint.every=1"),
        workdir,
        kills=3,
        rng=random.Random(0),
        max_delay=0.3,
        env=dict(os.environ),
        timeout=240,
        span=(1, 2),
    )
    assert len(records) == 3, records  # each kill landed before the run could finish
    assert losses_in_order(workdir) == losses_in_order(ref)
    assert_trees_equal(final_params(workdir), final_params(ref))
