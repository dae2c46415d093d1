"""The training loop end to end on the tiny config and the bundled RedPajama .pbin files (8 fake CPU devices)."""

import glob
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import (
    REPO,
    STEPS,
    TRAIN_PBIN,
    VAL_PBIN,
    assert_close,
    assert_trees_equal,
    checkpoint_steps,
    final_params,
    losses_in_order,
    read_metrics,
    tiny_cli,
    tiny_config,
    train_losses,
)

from jaxgpt import checkpoint, rundir, train
from jaxgpt.data.format import pbin
from jaxgpt.errors import CheckpointError, ConfigError, PackedDataError, TrainingStopped
from jaxgpt.train import evaluation, resume, signals, step
from jaxgpt.train.recorder import Cadence, Recorder
from jaxgpt.train.setup import setup

# A tiny run's loss on another mesh adds its sums in another order: each token's logsumexp over the 50304 vocab rows,
# and the mean over a step's 512 tokens (the same for the gradients behind the next steps' losses).
TOKEN_SUMS = 50304 + 512


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """STEPS uninterrupted steps: the reference every resume must reproduce."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    train.run(tiny_config(), workdir)
    return workdir


def test_loss_decreases(tmp_path, capsys):
    workdir = str(tmp_path)
    train.run(tiny_config(**{"train.num_steps": 40, "train.eval_every": 40, "optim.warmup_steps": 5}), workdir)
    losses = [train_losses(workdir)[s] for s in range(1, 41)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert "warmup: 4 steps (optim.warmup_steps=5, capped at 10% of the 40-step run)" in capsys.readouterr().out


def test_metrics_and_config_files(straight_run):
    events = read_metrics(straight_run)
    train_events = [e for e in events if e["event"] == "train"]
    eval_events = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in train_events] == list(range(1, STEPS + 1))
    for e in train_events:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= e.keys()
        assert np.isfinite([e["loss"], e["lr"], e["grad_norm"], e["tokens_per_s"], e["mfu"]]).all()
        assert e["tokens_per_s"] > 0 and 0 < e["mfu"] < 1
    assert [e["step"] for e in eval_events] == [3, 6]
    for e in eval_events:
        assert e["eval_ppl"] == pytest.approx(np.exp(e["eval_loss"]))
    with open(os.path.join(straight_run, "config.json")) as f:
        resolved = json.load(f)
    assert resolved["config"]["train"]["num_steps"] == STEPS
    assert resolved["derived"]["num_steps"] == STEPS
    assert resolved["derived"]["global_batch"] == resolved["config"]["train"]["micro_batch_size"] * 8
    assert checkpoint.Checkpointer(rundir.checkpoint_dir(straight_run), every=1, keep=9).latest_step() == STEPS


def test_resume_is_exact(straight_run, tmp_path):
    workdir = str(tmp_path)
    train.run(tiny_config(), workdir, stop_after=3)
    assert max(train_losses(workdir)) == 3
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"event": "train", "step": 4, "lo')  # what a kill -9 mid-write leaves; resume must drop it
    train.run(tiny_config(), workdir)
    assert train_losses(workdir) == train_losses(straight_run)  # exact, not approximate
    assert_trees_equal(final_params(workdir), final_params(straight_run))


def test_resume_refuses_other_settings(tmp_path):
    workdir = str(tmp_path)
    two_files = f"{TRAIN_PBIN},{VAL_PBIN}"
    train.run(tiny_config(**{"data.train_path": two_files}), workdir, stop_after=2)
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = f.read()
    names = [f"{os.path.basename(p)} ({os.path.getsize(p)} bytes)" for p in (TRAIN_PBIN, VAL_PBIN)]
    refused = [  # (overrides, every difference the error must list, and only those)
        ({"data.seed": 1}, "data.seed: checkpoint 0 vs now 1"),
        # the lr of every step follows the run's length (a wsd run's stable phase alone extends: test_schedules.py)
        (
            {"train.num_steps": 12},
            "train.num_steps: checkpoint 6 vs now 12 (optim.schedule='cosine' spans the whole run, so train.num_steps"
            " sets the lr of every step; only 'wsd' extends, from its stable phase)",
        ),
        ({"model.n_layer": 3}, "model.n_layer: checkpoint 2 vs now 3"),
        ({"optim.lr": 2e-3}, "optim.lr: checkpoint 0.001 vs now 0.002"),
        ({"optim.clip_norm": 0.0}, "optim.clip_norm: checkpoint 1.0 vs now 0.0"),  # another optimizer-state tree
        ({"train.z_loss": 1e-4}, "train.z_loss: checkpoint 0.0 vs now 0.0001"),
        # The same global batch of 8, as 2 micro batches of 4 rows instead of 1 of 8 (on 4 x 2 devices).
        ({"train.grad_accum": 2, "mesh.fsdp": 4, "mesh.tensor": 2}, "train.grad_accum: checkpoint 1 vs now 2"),
        # The same window count, another order of the data.
        ({"data.train_path": f"{VAL_PBIN},{TRAIN_PBIN}"}, f"train_files: checkpoint {names!r} vs now {names[::-1]!r}"),
    ]
    for overrides, diffs in refused:
        with pytest.raises(CheckpointError, match=re.escape(f"exactly ({diffs}).")):
            train.run(tiny_config(**{"data.train_path": two_files, **overrides}), workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == recorded  # a refused resume leaves the record of the run that made the checkpoints alone


def test_resume_accepts_another_mesh_cadence_and_data_location(straight_run, tmp_path):
    workdir, elsewhere = str(tmp_path / "run"), tmp_path / "copied"
    train.run(tiny_config(), workdir, stop_after=2)
    elsewhere.mkdir()
    shutil.copy(TRAIN_PBIN, elsewhere)  # the same file in another directory is the same data
    moved = {"data.train_path": str(elsewhere / os.path.basename(TRAIN_PBIN)), "mesh.data": 2, "mesh.fsdp": 4}
    train.run(tiny_config(**moved, **{"train.log_every": 2, "checkpoint.every": 5, "data.prefetch": 0}), workdir)
    a, b = train_losses(workdir), train_losses(straight_run)
    assert sorted(a) == [1, 2, 4, 6]  # the new cadence from step 3 on
    assert_close([a[s] for s in a], [b[s] for s in a], depth=TOKEN_SUMS)
    assert checkpoint_steps(workdir) == [2, 5, 6]


# A SIGTERM that lands while the final checkpoint is being written (a scheduler repeating its signal).
_SIGTERM_DURING_THE_FINAL_SAVE = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from conftest import tiny_config  # and 8 fake CPU devices
from jaxgpt import checkpoint, train

wait = checkpoint.Checkpointer.wait
def sigterm_then_wait(self):
    os.kill(os.getpid(), signal.SIGTERM)
    return wait(self)

checkpoint.Checkpointer.wait = sigterm_then_wait
train.run(tiny_config(**{"train.num_steps": 2, "data.val_path": ""}), sys.argv[1])
print("run returned")
"""


def test_a_sigterm_during_the_final_save_does_not_kill_the_run(tmp_path):
    """The run's signal handlers stay in place until the last checkpoint is on disk."""
    args = [sys.executable, "-c", _SIGTERM_DURING_THE_FINAL_SAVE, str(tmp_path), str(REPO / "tests")]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "run returned" in proc.stdout, proc.stderr[-2000:]
    assert checkpoint_steps(str(tmp_path)) == [2]


def test_a_checkpoint_without_the_training_file_record_resumes_with_a_warning():
    """Checkpoints of an older jaxgpt hold no train_files: compared as far as they go, with a warning."""
    cfg = tiny_config()
    stream = {"global_batch_size": 8, "num_windows": 100, "num_steps": STEPS, "train_files": ["a.pbin (10 bytes)"]}
    saved_config = json.loads(json.dumps(cfg.to_dict()))
    older = {k: v for k, v in stream.items() if k != "train_files"}
    with pytest.warns(UserWarning, match=r"ckpt: step 2 holds no record of \['train_files'\]"):
        resume.check_resumable(saved_config, older, cfg, stream, "ckpt", 2)
    with pytest.raises(CheckpointError, match="num_windows: checkpoint 99 vs now 100"):
        resume.check_resumable(saved_config, {**stream, "num_windows": 99}, cfg, stream, "ckpt", 2)


def test_a_stop_signal_at_the_last_step_leaves_its_eval_to_the_resume(straight_run, tmp_path, monkeypatch):
    workdir = str(tmp_path)
    agreed, calls = signals.StopSignal.agreed, itertools.count(1)

    def sigterm_during_the_last_step(self):
        if next(calls) == STEPS:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the run's handler, as a scheduler's SIGTERM would be
        return agreed(self)

    monkeypatch.setattr(signals.StopSignal, "agreed", sigterm_during_the_last_step)
    train.run(tiny_config(), workdir)
    assert [e["step"] for e in read_metrics(workdir) if e["event"] == "eval"] == [3]  # saved, not evaluated
    assert checkpoint_steps(workdir)[-1] == STEPS
    monkeypatch.undo()
    train.run(tiny_config(), workdir)  # resumes at the last step: only the eval is left to do
    assert losses_in_order(workdir) == losses_in_order(straight_run)


def test_a_failed_eval_keeps_the_checkpoint_of_its_step_and_the_resume_redoes_it(straight_run, tmp_path, monkeypatch):
    workdir = str(tmp_path)

    def failing_evaluate(*args, **kwargs):
        raise OSError("validation disk gone")

    monkeypatch.setattr(evaluation, "evaluate", failing_evaluate)
    with pytest.raises(OSError, match="validation disk gone"):
        train.run(tiny_config(**{"checkpoint.every": 3}), workdir)  # step 3 saves and evaluates
    assert checkpoint_steps(workdir) == [3]
    monkeypatch.undo()
    train.run(tiny_config(), workdir)
    assert losses_in_order(workdir) == losses_in_order(straight_run)


def test_bad_validation_ids_fail_before_step_1(tmp_path):
    bad, workdir = str(tmp_path / "bad_val.pbin"), str(tmp_path / "run")
    shutil.copy(VAL_PBIN, bad)
    data_len, width, _ = pbin.read_header(bad)
    tokens = np.memmap(bad, pbin.WIDTH_DTYPES[width], mode="r+", offset=pbin.HEADER_BYTES, shape=(data_len // width,))
    seq_len = tiny_config().data.seq_len
    tokens[seq_len + 1] = 60000  # in window 1, which the first evaluation reads
    tokens.flush()
    del tokens
    with pytest.raises(PackedDataError, match=r"bad_val.pbin: window 1 holds token id 60000 >= model"):
        train.run(tiny_config(**{"data.val_path": bad}), workdir)
    assert not os.path.exists(workdir)  # refused before anything was written, not at the first evaluation


@pytest.mark.parametrize(
    "overrides, stop_after, message",
    [
        ({"train.eval_batch_size": -8}, None, "train.eval_batch_size=-8 must be an int >= 0"),
        ({"data.prefetch": -1}, None, "data.prefetch=-1 must be an int >= 0"),
        ({"wandb.mode": "bogus"}, None, "wandb.mode='bogus' must be"),
        ({}, 0, "--stop_after=0 must be an int >= 1"),
        ({"model.doc_mask": True, "model.eod_token_id": 5}, None, "model.eod_token_id=5 but data.tokenizer_file="),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, overrides, stop_after, message):
    workdir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.run(tiny_config(**overrides), workdir, stop_after=stop_after)
    assert not os.path.exists(workdir)


def test_a_file_in_the_way_of_the_workdir_or_its_checkpoints_is_named(tmp_path):
    (tmp_path / "file").write_text("not a run")
    with pytest.raises(ConfigError, match=f"--workdir={tmp_path / 'file'}: cannot be used as the run directory"):
        train.run(tiny_config(), str(tmp_path / "file"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'run' / 'checkpoints'}: is a file"):
        train.run(tiny_config(), str(tmp_path / "run"))


@pytest.mark.parametrize("damage", ["no_params", "no_data"])
def test_a_damaged_checkpoint_is_a_checkpoint_error_naming_it(straight_run, tmp_path, damage):
    workdir, step = str(tmp_path), STEPS
    shutil.copytree(f"{rundir.checkpoint_dir(straight_run)}/{STEPS}", f"{tmp_path}/checkpoints/{STEPS}")
    shutil.rmtree(f"{tmp_path}/checkpoints/{STEPS}/{damage.removeprefix('no_')}")
    expected = re.escape(f"{rundir.checkpoint_dir(workdir)}/{step}: cannot restore it: not a complete jaxgpt")
    with pytest.raises(CheckpointError, match=expected):
        train.run(tiny_config(), workdir)
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.load(workdir)


def test_a_step_directory_another_tool_left_is_passed_over_with_a_warning(straight_run, tmp_path):
    workdir, foreign = str(tmp_path), STEPS + 3
    shutil.copytree(f"{rundir.checkpoint_dir(straight_run)}/{STEPS}", f"{tmp_path}/checkpoints/{STEPS}")
    os.makedirs(f"{tmp_path}/checkpoints/{foreign}/foo")  # never committed by Orbax
    with pytest.raises(CheckpointError, match=f"{foreign}"):
        checkpoint.load(workdir, step=foreign)
    with pytest.warns(UserWarning, match=f"{foreign}: damaged checkpoint .*falling back to step {STEPS}"):
        train.run(tiny_config(), workdir)


def test_token_ids_beyond_the_vocab_are_a_data_error(tmp_path):
    with pytest.raises(
        PackedDataError,
        match=r"redpajama_v2_samples_512_train.pbin: window \d+ holds token id \d+ >= model.vocab_size=1000",
    ):
        # Without validation files, which are read whole before step 1: training batches are checked as they are read.
        train.run(tiny_config(**{"model.vocab_size": 1000, "data.val_path": ""}), str(tmp_path))


def test_restore_onto_another_mesh(tmp_path):
    fsdp8, resharded = str(tmp_path / "fsdp8"), str(tmp_path / "resharded")
    train.run(tiny_config(**{"mesh.fsdp": 8}), fsdp8)
    train.run(tiny_config(**{"mesh.fsdp": 8}), resharded, stop_after=2)
    train.run(tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4}), resharded)
    a, b = train_losses(fsdp8), train_losses(resharded)
    assert a.keys() == b.keys()
    assert_close([a[s] for s in a], [b[s] for s in a], depth=TOKEN_SUMS)
    assert_trees_equal(final_params(fsdp8), final_params(resharded), depth=512)  # gradients sum 512 tokens

    # A fresh process with ONE cpu device opens the fsdp=8 checkpoint and gives the same logits.
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8)
    model, _ = checkpoint.load(fsdp8)
    expected = np.asarray(model(tokens))
    script = (
        "import sys, numpy as np, jax\n"
        "from jaxgpt import checkpoint\n"
        "assert jax.device_count() == 1, jax.devices()\n"
        "model, config = checkpoint.load(sys.argv[1])\n"
        "assert config.mesh.fsdp == 8\n"
        "np.save(sys.argv[2], np.asarray(model(np.arange(16, dtype=np.int32).reshape(2, 8))))\n"
    )
    out = str(tmp_path / "logits.npy")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    subprocess.run([sys.executable, "-c", script, fsdp8, out], check=True, env=env, cwd=REPO, timeout=300)
    assert_close(np.load(out), expected, depth=256)  # tiny's MLP hidden: the longest sum of a logit


def _wait_for_checkpoint(proc, workdir, timeout=300):
    deadline = time.time() + timeout
    ckpt_dir = rundir.checkpoint_dir(workdir)
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited early with {proc.returncode}: {proc.stderr.read()}")
        # Only finished checkpoints: Orbax writes into "<step>.orbax-checkpoint-tmp-*" and renames when complete.
        if os.path.isdir(ckpt_dir) and any(name.isdigit() for name in os.listdir(ckpt_dir)):
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def test_sigterm_saves_and_exits_cleanly_then_kill9_resumes_exactly(straight_run, tmp_path):
    workdir = str(tmp_path)
    # A 200-step run that saves every step, so that the signal lands mid-run, after the first checkpoint.
    proc = subprocess.Popen(
        tiny_cli(workdir, "--config.checkpoint.every=1", "--config.train.num_steps=200"),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(proc, workdir)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    stopped_at = max(train_losses(workdir))
    assert 1 <= stopped_at < 200
    assert checkpoint.Checkpointer(rundir.checkpoint_dir(workdir), every=1, keep=9).latest_step() == stopped_at

    # kill -9 at an arbitrary moment (possibly mid-save) of a run with the reference's schedule, then resume to the end.
    workdir = str(tmp_path / "killed")
    proc = subprocess.Popen(
        tiny_cli(workdir, "--config.checkpoint.every=1"), cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    _wait_for_checkpoint(proc, workdir)
    proc.kill()
    proc.wait()
    killed_at = checkpoint.Checkpointer(rundir.checkpoint_dir(workdir), every=1, keep=9).latest_step()
    assert killed_at is not None and 1 <= killed_at < STEPS  # the resume below really starts mid-run
    train.run(tiny_config(), workdir)
    assert train_losses(workdir) == train_losses(straight_run)
    assert_trees_equal(final_params(workdir), final_params(straight_run))


def test_cli_override_and_unknown_key(tmp_path):
    ok = subprocess.run(
        tiny_cli(tmp_path / "ok", "--config.train.num_steps=2", "--config.train.eval_every=2"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    with open(tmp_path / "ok" / "config.json") as f:
        assert json.load(f)["config"]["train"]["num_steps"] == 2

    bad = subprocess.run(
        tiny_cli(tmp_path / "bad", "--config.train.no_such_knob=3"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "train.no_such_knob" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    wrong_type = subprocess.run(
        tiny_cli(tmp_path / "bad", "--config.train.log_every=often"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong_type.returncode != 0
    assert "train.log_every" in wrong_type.stderr and "Traceback" not in wrong_type.stderr, wrong_type.stderr
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")


@pytest.mark.parametrize("nan_at", [None, 5], ids=["lr_1e30_diverges", "nan_loss_at_step_5"])
def test_nonfinite_loss_stops_naming_the_newest_checkpoint_known_good(tmp_path, monkeypatch, nan_at):
    """Step k's loss is that of the checkpoint of step k - 1: only a checkpoint whose next step was finite is good."""
    workdir = str(tmp_path)
    overrides = {"checkpoint.every": 1, "train.num_steps": 20}
    if nan_at is None:  # a real divergence: the parameters after step 1 (saved) already give NaN
        overrides |= {"optim.lr": 1e30, "optim.warmup_steps": 0, "optim.clip_norm": 0.0}
    else:  # finite training with a NaN loss reported at step `nan_at`, so that older checkpoints are good
        make_train_step = step.make_train_step

        def make_step_with_a_nan(*args, **kwargs):
            step_fn = make_train_step(*args, **kwargs)

            def step(state, batch):
                state, metrics = step_fn(state, batch)
                return state, (metrics | {"loss": np.float32("nan")} if int(state.step) == nan_at else metrics)

            return step

        monkeypatch.setattr(step, "make_train_step", make_step_with_a_nan)
    with pytest.raises(TrainingStopped, match=r"step \d+: loss=nan .* is not finite") as stopped:
        train.run(tiny_config(**overrides), workdir)
    message = str(stopped.value)
    stopped_at = int(re.match(r"step (\d+)", message)[1])
    losses = train_losses(workdir)  # steps before stopped_at, all finite
    assert sorted(losses) == list(range(1, stopped_at)) and all(math.isfinite(v) for v in losses.values())
    saved = checkpoint_steps(workdir)
    assert saved and max(saved) == stopped_at - 1  # the state that gave the non-finite loss was saved ...
    good = [s for s in saved if s + 1 in losses]  # ... but only a checkpoint whose next step was finite is good
    if nan_at is None:
        assert good == [] and message.endswith("no checkpoint is known good.")
    else:
        assert good and f"is step {max(good)} in {rundir.checkpoint_dir(workdir)}." in message


def test_wandb_offline_run_holds_the_metrics(tmp_path):
    workdir = str(tmp_path)
    train.run(tiny_config(**{"wandb.mode": "offline", "train.num_steps": 3, "train.eval_every": 3}), workdir)
    runs = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, os.listdir(workdir)
    with open(runs[0], "rb") as f:
        blob = f.read()
    for key in (b"loss", b"grad_norm", b"tokens_per_s", b"mfu", b"eval_loss", b"eval_ppl"):
        assert key in blob


def test_two_processes_train_like_one(straight_run, tmp_path):
    """Two jax.distributed CPU processes (4 devices each, gloo) form one 8-device mesh and equal the 1-process run."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    workdir = str(tmp_path)
    cmd = tiny_cli(workdir, f"--coordinator_address=localhost:{port}", "--num_processes=2")
    procs = [
        subprocess.Popen([*cmd, f"--process_id={i}"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    a, b = train_losses(workdir), train_losses(straight_run)
    assert a.keys() == b.keys()
    assert_close([a[s] for s in a], [b[s] for s in a], depth=TOKEN_SUMS)
    evals = [[e["eval_loss"] for e in read_metrics(w) if e["event"] == "eval"] for w in (workdir, straight_run)]
    assert_close(*evals, depth=TOKEN_SUMS)


def test_a_wandb_failure_warns_and_training_goes_on(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise ConnectionError("wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="W&B init failed, continuing without W&B: ConnectionError"):
        train.run(tiny_config(**{"wandb.mode": "online", "train.num_steps": 2, "train.eval_every": 2}), str(tmp_path))
    assert max(train_losses(str(tmp_path))) == 2


def test_setup_writes_nothing_and_the_recorder_logs_its_cadence(tmp_path):
    """The run's pieces on their own: `setup` only reads; the recorder writes every train.log_every steps and at the
    last, and a non-finite loss stops it naming the newest checkpoint whose next step was finite."""
    workdir = tmp_path / "run"
    run = setup(tiny_config(**{"train.log_every": 4}), str(workdir), stop_after=None)
    assert not workdir.exists() and run.end_step == STEPS and run.plan.global_batch == 8
    workdir.mkdir()

    class Checkpoints:
        directory = "ckpt"

        def newest(self, at_most):
            return 3 if at_most >= 3 else None

    metrics = {"loss": np.float32(4.0), "grad_norm": np.float32(1.0), "lr": np.float32(1e-3)}
    p = run.plan
    cadence = Cadence(p.num_steps, run.end_step, p.log_every, p.tokens_per_step, run.flops_per_token, run.peak_flops)
    with Recorder(str(workdir), cadence, run.config.wandb, {}, 0, Checkpoints()) as recorder:
        for step in range(1, STEPS + 1):
            recorder.train(step, metrics)
        recorder.eval(STEPS, {"eval_loss": 4.5, "eval_ppl": math.exp(4.5)})
        with pytest.raises(TrainingStopped, match=r"step 5: loss=nan .* known good .* is step 3 in ckpt\."):
            recorder.train(5, {**metrics, "loss": np.float32("nan")})
        with pytest.raises(TrainingStopped, match=r"step 4: .* no checkpoint is known good\."):
            recorder.train(4, {**metrics, "grad_norm": np.float32("inf")})
    events = read_metrics(str(workdir))
    assert [(e["event"], e["step"]) for e in events] == [("train", 4), ("train", STEPS), ("eval", STEPS)]
    assert recorder.last["train"]["step"] == STEPS and recorder.last["eval"]["eval_loss"] == 4.5
    assert all(e["tokens_per_s"] > 0 and e["mfu"] > 0 for e in events if e["event"] == "train")


@pytest.mark.parametrize(
    "num_steps, log_every, expected", [(6, None, 1), (100, None, 1), (101, None, 10), (6, 10, 10), (101, 1, 1)]
)
def test_a_short_run_logs_every_step_unless_log_every_is_set(tmp_path, num_steps, log_every, expected):
    """train.log_every unset: every step up to 100 steps (a short run's plot draws its curve), else every 10."""
    run = setup(tiny_config(**{"train.num_steps": num_steps, "train.log_every": log_every}), str(tmp_path), None)
    assert run.plan.log_every == expected and run.cfg.train.log_every == log_every  # config.json keeps it unset


def test_a_run_builds_its_state_layout_once_and_load_needs_no_train_step(tmp_path, monkeypatch):
    """The steps, the checkpointer and init share one StateLayout; checkpoint.load builds the model without the step."""
    from jaxgpt.train.state import StateLayout

    builds = []
    build = StateLayout.build.__func__

    def counted(cls, *args, **kwargs):
        builds.append(args)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(StateLayout, "build", classmethod(counted))
    train.run(tiny_config(**{"train.num_steps": 2, "train.eval_every": 2}), str(tmp_path))
    assert len(builds) == 1
    script = (
        "import sys\n"
        "from jaxgpt import checkpoint\n"
        "checkpoint.load(sys.argv[1])\n"
        "loaded = {'jaxgpt.train.step', 'jaxgpt.train.loop'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=REPO, timeout=300)


def test_a_document_masked_run_trains_and_differs_from_the_plain_one(straight_run, tmp_path):
    """The bundled documents end at <|endoftext|>: masking them changes every loss from step 1 on (the first step's
    params are the same), and the run trains."""
    workdir = str(tmp_path)
    train.run(tiny_config(**{"model.doc_mask": True, "model.doc_positions": True}), workdir)
    masked, plain = train_losses(workdir), train_losses(straight_run)
    assert sorted(masked) == sorted(plain)
    assert all(math.isfinite(masked[s]) and masked[s] != plain[s] for s in masked)
    assert json.load(open(rundir.path(workdir, rundir.CONFIG)))["config"]["model"]["doc_mask"] is True
