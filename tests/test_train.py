"""The training loop end to end on the tiny config and the bundled RedPajama .pbin files (8 fake CPU devices)."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, TEST_DATA
from jaxgpt import checkpoint, train
from jaxgpt.pbin import PackedDataError

TRAIN_PBIN = str(TEST_DATA / "redpajama_v2_samples_512_train.pbin")
VAL_PBIN = str(TEST_DATA / "redpajama_v2_samples_512_test.pbin")
TINY = str(REPO / "configs" / "tiny.py")
STEPS = 6


def tiny_config(**overrides):
    """configs/tiny.py on the bundled data, short and fast, with `overrides` as {"section.key": value}."""
    from jaxgpt.train import load_config_file

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


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir):
    return {e["step"]: e["loss"] for e in read_metrics(workdir) if e["event"] == "train"}


def final_params(workdir):
    model, _ = checkpoint.load(workdir)
    from flax import nnx

    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """STEPS uninterrupted steps: the reference every resume must reproduce."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    train.run(tiny_config(), workdir)
    return workdir


def test_loss_decreases(tmp_path):
    workdir = str(tmp_path)
    train.run(tiny_config(**{"train.num_steps": 40, "train.eval_every": 40, "optim.warmup_steps": 5}), workdir)
    losses = [train_losses(workdir)[s] for s in range(1, 41)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses


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
    assert checkpoint.Checkpointer(checkpoint.checkpoint_dir(straight_run), every=1, keep=9).latest_step() == STEPS


def test_resume_is_exact(straight_run, tmp_path):
    workdir = str(tmp_path)
    train.run(tiny_config(), workdir, stop_after=3)
    assert max(train_losses(workdir)) == 3
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"event": "train", "step": 4, "lo')  # what a kill -9 mid-write leaves; resume must drop it
    train.run(tiny_config(), workdir)
    assert train_losses(workdir) == train_losses(straight_run)  # exact, not approximate
    assert_trees_equal(final_params(workdir), final_params(straight_run))


def test_resume_refuses_other_settings(straight_run, tmp_path):
    workdir = str(tmp_path)
    train.run(tiny_config(), workdir, stop_after=2)
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = f.read()
    with pytest.raises(checkpoint.CheckpointError, match="seed: checkpoint 0 vs now 1"):
        train.run(tiny_config(**{"data.seed": 1}), workdir)
    with pytest.raises(checkpoint.CheckpointError, match="num_steps: checkpoint 6 vs now 12"):
        train.run(tiny_config(**{"train.num_steps": 12}), workdir)
    with pytest.raises(checkpoint.CheckpointError, match="model.n_layer: checkpoint 2 vs now 3"):
        train.run(tiny_config(**{"model.n_layer": 3}), workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == recorded  # a refused resume leaves the record of the real run alone


def test_token_ids_beyond_the_vocab_are_a_data_error(tmp_path):
    with pytest.raises(
        PackedDataError,
        match=r"redpajama_v2_samples_512_train.pbin: window \d+ holds token id \d+ >= model.vocab_size=1000",
    ):
        train.run(tiny_config(**{"model.vocab_size": 1000}), str(tmp_path))


def test_restore_onto_another_mesh(tmp_path):
    fsdp8, resharded = str(tmp_path / "fsdp8"), str(tmp_path / "resharded")
    train.run(tiny_config(**{"mesh.fsdp": 8}), fsdp8)
    train.run(tiny_config(**{"mesh.fsdp": 8}), resharded, stop_after=2)
    train.run(tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4}), resharded)
    a, b = train_losses(fsdp8), train_losses(resharded)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
    assert_trees_equal(final_params(fsdp8), final_params(resharded), rtol=1e-4, atol=1e-6)

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
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)


def _cli(workdir, *overrides, stop_after=None):
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


def _wait_for_checkpoint(proc, workdir, timeout=300):
    deadline = time.time() + timeout
    ckpt_dir = checkpoint.checkpoint_dir(workdir)
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
    # Slow the run down with a large log and 1-step checkpoints so that the signals land mid-run.
    proc = subprocess.Popen(
        _cli(workdir, "--config.checkpoint.every=1", "--config.train.num_steps=200"),
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
    assert checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), every=1, keep=9).latest_step() == stopped_at

    # kill -9 at an arbitrary moment (possibly mid-save) of a run with the reference's schedule, then resume to the end.
    workdir = str(tmp_path / "killed")
    proc = subprocess.Popen(_cli(workdir, "--config.checkpoint.every=1"), cwd=REPO, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, workdir)
    proc.kill()
    proc.wait()
    killed_at = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), every=1, keep=9).latest_step()
    assert killed_at is not None and 1 <= killed_at < STEPS  # the resume below really starts mid-run
    train.run(tiny_config(), workdir)
    assert train_losses(workdir) == train_losses(straight_run)
    assert_trees_equal(final_params(workdir), final_params(straight_run))


def test_cli_override_and_unknown_key(tmp_path):
    ok = subprocess.run(
        _cli(tmp_path / "ok", "--config.train.num_steps=2", "--config.train.eval_every=2"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    with open(tmp_path / "ok" / "config.json") as f:
        assert json.load(f)["config"]["train"]["num_steps"] == 2

    bad = subprocess.run(
        _cli(tmp_path / "bad", "--config.train.no_such_knob=3"), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode != 0
    assert "train.no_such_knob" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    wrong_type = subprocess.run(
        _cli(tmp_path / "bad", "--config.train.log_every=often"), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert wrong_type.returncode != 0
    assert "train.log_every" in wrong_type.stderr and "Traceback" not in wrong_type.stderr, wrong_type.stderr
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path):
    workdir = str(tmp_path)
    cfg = tiny_config(**{"optim.lr": 1e30, "optim.warmup_steps": 0, "optim.clip_norm": 0.0, "train.num_steps": 20})
    with pytest.raises(train.TrainingStopped, match=r"step \d+: loss=.* is not finite"):
        train.run(cfg, workdir)
    ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), every=1, keep=9)
    good = ckpt.latest_step()
    if good is not None:  # any checkpoint kept must be a finite one
        model, _ = checkpoint.load(workdir)
        from flax import nnx

        assert all(np.isfinite(x).all() for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


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
    """Two jax.distributed CPU processes (4 devices each, gloo) form one 8-device mesh and reproduce the 1-process run."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    workdir = str(tmp_path)
    cmd = _cli(workdir, f"--coordinator_address=localhost:{port}", "--num_processes=2")
    procs = [
        subprocess.Popen([*cmd, f"--process_id={i}"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    a, b = train_losses(workdir), train_losses(straight_run)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
    evals = [[e["eval_loss"] for e in read_metrics(w) if e["event"] == "eval"] for w in (workdir, straight_run)]
    np.testing.assert_allclose(*evals, rtol=1e-5)


def test_a_wandb_failure_warns_and_training_goes_on(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise ConnectionError("wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="W&B init failed, continuing without W&B: ConnectionError"):
        train.run(tiny_config(**{"wandb.mode": "online", "train.num_steps": 2, "train.eval_every": 2}), str(tmp_path))
    assert max(train_losses(str(tmp_path))) == 2
