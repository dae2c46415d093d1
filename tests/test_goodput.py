"""Goodput: every second of an attempt is booked to one category, the bookings add up over the attempts that
DIR/goodput.json records, and a run killed with -9 and resumed counts the steps it did again."""

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import REPO, checkpoints_on_disk, logged_step, read_metrics, tiny_cli

from jaxgpt.train import goodput
from jaxgpt.train.goodput import CATEGORIES, Goodput


class Clock:
    """A perf_counter that moves only when told."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_each_second_is_booked_once_and_the_attempts_add_up(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(goodput.time, "perf_counter", clock)
    path = str(tmp_path / "goodput.json")
    g = Goodput(path, start_step=0, logged_step=0, since=clock.now - 2.0)  # run() was called 2 s ago
    g.book("startup")
    costs = iter([5.0, 0.0])  # the first call compiles for 5 s; the second returns at once
    step = g.compiling(lambda: setattr(clock, "now", clock.now + next(costs)))
    step()
    clock.now += 1.0
    g.step(1)  # 1 s waiting for step 1
    with g.timing("data_wait"):
        clock.now += 0.5
    step()
    clock.now += 0.5
    g.step(2)
    with g.timing("checkpoint"):
        clock.now += 3.0
    g.save()
    expected = {"productive": 1.5, "compile": 5.0, "startup": 2.0, "data_wait": 0.5, "checkpoint": 3.0}
    assert g.seconds == {**dict.fromkeys(CATEGORIES, 0.0), **expected}
    assert sum(g.seconds.values()) == clock.now - 98.0  # the whole attempt, every second once

    # A resume at step 1 after the attempt above logged step 2: step 2 is done again.
    again = Goodput(path, start_step=1, logged_step=0, since=clock.now)
    clock.now += 4.0
    again.step(2)
    clock.now += 1.0
    again.step(3)
    fields = again.fields()
    assert fields["time/recomputed_s"] == 4.0 and fields["recomputed_steps"] == 1 and fields["attempts"] == 2
    assert fields["time/productive_s"] == 2.5 and fields["time/wall_s"] == 17.0
    assert fields["goodput"] == 2.5 / 17.0


def test_a_damaged_goodput_file_warns_and_counts_from_this_attempt(tmp_path):
    path = tmp_path / "goodput.json"
    path.write_text('{"attempts": [{"started": "yesterday"}]}')
    with pytest.warns(UserWarning, match=r"goodput.json: not readable \(ValueError: an attempt lacks a field"):
        g = Goodput(str(path), start_step=4, logged_step=4)
    assert g.previous == [] and g.fields()["attempts"] == 1


def test_a_run_killed_with_minus_9_and_resumed_counts_the_steps_it_recomputed(tmp_path):
    """Three attempts: a clean stop after step 2; a resume killed with -9 after it logged step 5 (checkpoints every 2,
    so the newest one is step 4); a resume that does step 5 again and finishes. The lost step is counted, each
    attempt's time is in goodput.json, and the last log line and the report add them up."""
    workdir = str(tmp_path)
    cmd = tiny_cli(workdir, "--config.checkpoint.every=2", "--config.train.num_steps=8")
    subprocess.run([*cmd, "--stop_after=2"], cwd=REPO, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and logged_step(workdir) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged, newest = logged_step(workdir), max(checkpoints_on_disk(workdir)[0])
    assert logged - newest >= 1, "the kill landed after the checkpoint of the last logged step: nothing to recompute"

    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300).stdout
    with open(os.path.join(workdir, "goodput.json")) as f:
        attempts = json.load(f)["attempts"]
    killed = attempts[1]["step"]  # goodput.json is written just after the log line: the kill may fall in between
    assert killed in (logged - 1, logged)
    lost = logged - newest
    assert [(a["start_step"], a["step"], a["recomputed_steps"]) for a in attempts] == [
        (0, 2, 0),
        (2, killed, 0),
        (newest, 8, lost),
    ]
    last = [e for e in read_metrics(workdir) if e["event"] == "train"][-1]
    assert last["step"] == 8 and last["attempts"] == 3 and last["recomputed_steps"] == lost
    assert last["time/recomputed_s"] > 0 and last["time/productive_s"] > 0 and last["time/startup_s"] > 0
    wall = sum(last[f"time/{c}_s"] for c in CATEGORIES)
    assert last["time/wall_s"] == pytest.approx(wall)
    assert last["goodput"] == pytest.approx(last["time/productive_s"] / wall)
    assert f"over 3 attempt(s) (2 resume(s), {lost} step(s) recomputed;" in out
    assert out.count("goodput ") == 1 and "\n  seconds: productive " in out
