"""train.profile_steps and train.profile_memory_step: a trace of exactly the steps asked for and a memory profile land
in DIR/profile/ and open; a profiled run computes what an unprofiled one does; bad values are one line naming
the key."""

import glob
import gzip
import json
import os
import re
import subprocess

import jax
import pytest
from conftest import REPO, losses_in_order, tiny_cli, tiny_config

from jaxgpt import train
from jaxgpt.config import TrainConfig
from jaxgpt.errors import ConfigError
from jaxgpt.train.profile import NEVER, Profiler


def test_a_profiled_run_computes_the_same_and_writes_a_trace_of_its_steps(tmp_path, capsys):
    plain, profiled = str(tmp_path / "plain"), str(tmp_path / "profiled")
    train.run(tiny_config(), plain)
    train.run(tiny_config(**{"train.profile_steps": "2:4", "train.profile_memory_step": 3}), profiled)
    assert losses_in_order(profiled) == losses_in_order(plain)  # evaluations included, bit for bit

    (trace,) = glob.glob(f"{profiled}/profile/plugins/profile/*/perfetto_trace.json.gz")
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    # the host's launches of the train step: steps 2, 3 and 4, both ends included, and no other
    launches = [e for e in events if re.fullmatch(r"\w+::Execute \(jit_step\)", e.get("name", ""))]
    assert len(launches) == 3
    (xplane,) = glob.glob(f"{profiled}/profile/plugins/profile/*/*.xplane.pb")  # what TensorBoard reads
    assert os.path.getsize(xplane) > 0
    with open(f"{profiled}/profile/memory_step3.prof", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # pprof's gzipped protobuf
    out = capsys.readouterr().out
    assert "https://ui.perfetto.dev" in out and f"tensorboard --logdir {profiled}/profile" in out
    assert f"pprof -http=: {profiled}/profile/memory_step3.prof" in out


def test_the_profiler_acts_after_the_steps_it_names(monkeypatch, tmp_path):
    """The trace starts once step START - 1 is done (at once when that is where the run resumes), stops once STOP is
    done, and the memory profile follows its step; a resume past them profiles nothing and says so."""
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda *a, **k: calls.append("start"))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append("stop"))
    monkeypatch.setattr(jax.profiler, "save_device_memory_profile", lambda path: calls.append(os.path.basename(path)))

    def run(start_step, end_step, **knobs):
        calls.clear()
        with Profiler(str(tmp_path), TrainConfig(**knobs), start_step) as profiler:
            for done in range(start_step + 1, end_step + 1):
                calls.append(done)
                if done == profiler.due:
                    profiler.after(done, None)
        return calls[:]

    assert run(0, 6, profile_steps="3:4", profile_memory_step=4) == [
        1,
        2,
        "start",
        3,
        4,
        "stop",
        "memory_step4.prof",
        5,
        6,
    ]
    assert run(2, 6, profile_steps="3:4") == ["start", 3, 4, "stop", 5, 6]
    assert run(0, 3, profile_steps="3:5") == [1, 2, "start", 3, "stop"]  # stopped inside the range: exit stops it
    assert run(0, 2, profile_steps="1:1") == ["start", 1, "stop", 2]
    with pytest.warns(
        UserWarning, match=r"train.profile_steps='3:4': the run resumes past it, at step 5; not profiled"
    ):
        assert run(4, 6, profile_steps="3:4") == [5, 6]
    assert Profiler(str(tmp_path), TrainConfig(), 0).due == NEVER


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.profile_steps": "5"}, "train.profile_steps='5' must be 'START:STOP'"),
        ({"train.profile_steps": "3:2"}, "train.profile_steps='3:2' must be 'START:STOP'"),
        ({"train.profile_steps": "a:b"}, "train.profile_steps='a:b' must be 'START:STOP'"),
        ({"train.profile_steps": "0:2"}, "train.profile_steps='0:2' must be 'START:STOP'"),
        ({"train.profile_steps": "5:7"}, "train.profile_steps='5:7' ends past the run's last step, 6"),
        ({"train.profile_memory_step": -1}, "train.profile_memory_step=-1 must be an int >= 0"),
        ({"train.profile_memory_step": 7}, "train.profile_memory_step=7 is past the run's last step, 6"),
    ],
)
def test_bad_profile_settings_fail_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.run(tiny_config(**overrides), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_a_bad_profile_range_is_one_line_on_the_command_line(tmp_path):
    out = subprocess.run(
        tiny_cli(tmp_path / "run", "--config.train.profile_steps=3:2"), cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 1 and out.stderr.startswith("error: train.profile_steps='3:2' must be"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
