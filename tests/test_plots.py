"""metrics.jsonl -> metrics.png: the end-of-run plot of a real tiny run, and the reader's tolerances and errors on
files written through the recorder itself (so they hold the real schema)."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import REPO, TEST_DATA, tiny_config
from matplotlib import image as mpimg
from PIL import Image

from jaxgpt import plots, train
from jaxgpt.config import WandbConfig
from jaxgpt.errors import MetricsError
from jaxgpt.train.recorder import Cadence, Recorder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_PIXELS = (1200, 800)  # plots.figure: 12 x 8 inches at 100 dpi
REAL_CONFIG_JSON = TEST_DATA / "checkpoint_v0_1" / "run" / "config.json"  # a real run's record: 256 tokens/step
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", FIGURE_PIXELS)
        im.verify()  # the chunks' CRCs: a truncated or damaged file fails here
    pixels_HxWxC = mpimg.imread(path)
    assert pixels_HxWxC.shape[:2] == FIGURE_PIXELS[::-1] and pixels_HxWxC.std() > 0.05  # drawn, not blank


def recorded_run(workdir, last_step, *, first_step=0, eval_every=0, shift=0.0):
    """A metrics.jsonl written by the real Recorder (train events of steps first_step + 1 .. last_step, an eval event
    every `eval_every` steps) beside a real run's config.json; `shift` moves every loss."""
    os.makedirs(workdir, exist_ok=True)
    shutil.copy(REAL_CONFIG_JSON, os.path.join(workdir, "config.json"))
    tokens_per_step = json.loads(REAL_CONFIG_JSON.read_text())["derived"]["tokens_per_step"]
    cadence = Cadence(last_step, last_step, 1, tokens_per_step, flops_per_token=1e6, peak_flops=1e12)
    wandb = WandbConfig(mode="disabled")
    with Recorder(str(workdir), cadence, wandb, {}, first_step, checkpoints=None) as recorder:
        for step in range(first_step + 1, last_step + 1):
            recorder.train(step, {"loss": 6.0 - 0.1 * step + shift, "grad_norm": 1.0 / step, "lr": 1e-3 * step})
            if eval_every and step % eval_every == 0:
                recorder.eval(step, {"eval_loss": 6.5 - 0.1 * step + shift, "eval_ppl": np.exp(6.5 - 0.1 * step)})
    return str(workdir)


def lines_of(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny run stopped at step 2 while the plot raises, then resumed to step 4 with the real plot."""
    workdir = str(tmp_path_factory.mktemp("plotted"))
    cfg = tiny_config(**{"train.num_steps": 4, "train.eval_every": 2, "train.eval_steps": 1})

    def broken_plot(*args, **kwargs):
        raise RuntimeError("no display\nsecond line")

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(plots, "plot_runs", broken_plot)
        stopped = train.run(cfg, workdir, stop_after=2)
    first = {"last": stopped, "warnings": [str(w.message) for w in caught], "png": os.listdir(workdir)}
    train.run(cfg, workdir)
    return workdir, first


def test_a_failing_plot_warns_and_the_run_goes_on(real_run):
    workdir, first = real_run
    assert first["last"]["train"]["step"] == 2 and first["last"]["eval"]["step"] == 2
    assert f"{workdir}/metrics.png not written: RuntimeError: no display" in first["warnings"]  # one line
    assert "metrics.png" not in first["png"]
    events = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [(e["event"], e["step"]) for e in events][-3:] == [("train", 3), ("train", 4), ("eval", 4)]


def test_a_run_plots_its_whole_metrics_file_at_its_end(real_run, tmp_path):
    workdir, _ = real_run
    png = os.path.join(workdir, "metrics.png")
    assert_png(png)
    # Drawn after the last event was written: redrawing the finished file gives the same bytes.
    again = plots.plot_runs([workdir], out=str(tmp_path / "again.png"))
    with open(png, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_the_figure_holds_the_real_runs_numbers(real_run):
    workdir, _ = real_run
    events = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_ev = [e for e in events if e["event"] == "train"]
    eval_ev = [e for e in events if e["event"] == "eval"]
    fig = plots.figure(plots.read_runs([workdir]))
    ax_loss, ax_lr, ax_grad, ax_speed = fig.axes[:4]
    assert lines_of(ax_loss) == {
        "train": ([1, 2, 3, 4], [e["loss"] for e in train_ev]),
        "eval": ([2, 4], [e["eval_loss"] for e in eval_ev]),
    }
    for ax, key in ((ax_lr, "lr"), (ax_grad, "grad_norm"), (ax_speed, "tokens_per_s")):
        ((xs, ys),) = lines_of(ax).values()
        assert (xs, ys) == ([1, 2, 3, 4], [e[key] for e in train_ev])
    tokens_per_step = json.load(open(os.path.join(workdir, "config.json")))["derived"]["tokens_per_step"]
    (top,) = ax_loss.child_axes  # the secondary x axis
    assert top.get_xlabel() == f"tokens seen ({tokens_per_step:,} per step)"
    assert fig.get_suptitle() == os.path.basename(workdir)
    with open(os.path.join(workdir, "metrics.png"), "rb") as f:
        assert fig._repr_png_() == f.read()  # what a notebook shows is metrics.png


def test_a_run_without_eval_events_plots(tmp_path):
    workdir = recorded_run(tmp_path / "no_eval", 5)
    out = plots.plot_runs([workdir])
    assert out == os.path.join(workdir, "metrics.png")
    assert_png(out)
    ax_loss = plots.figure(plots.read_runs([workdir])).axes[0]
    assert list(lines_of(ax_loss)) == ["train"]


def test_a_half_written_last_line_is_skipped(tmp_path):
    whole = recorded_run(tmp_path / "whole", 6, eval_every=3)
    cut = shutil.copytree(whole, tmp_path / "cut")
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 7, "lo')  # what a kill mid-write, or a run still writing, leaves
    assert plots.read_events(str(cut / "metrics.jsonl")) == plots.read_events(os.path.join(whole, "metrics.jsonl"))
    with open(plots.plot_runs([whole]), "rb") as a, open(plots.plot_runs([str(cut)], labels=["whole"]), "rb") as b:
        assert a.read() == b.read()


def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    """jaxgpt writes whole lines and drops a killed run's partial line on resume, so a bad line that is not the last
    was made by something else: plotting around it could hide that, so it is refused."""
    workdir = recorded_run(tmp_path / "run", 4, eval_every=2)
    path = os.path.join(workdir, "metrics.jsonl")
    good = open(path).read().splitlines(keepends=True)
    damages = {
        '{"event": "train", "st\n': "not a JSON line (Unterminated string starting at: column 20)",
        "[" * 100_000 + "\n": "not a JSON line (RecursionError)",
        "[1, 2]\n": "list [1, 2] is not a jaxgpt event",
        '{"event": "train", "step": "3", "loss": 1.0}\n': "step='3' is not a step number",
        '{"event": "train", "step": 3, "lr": 0.1}\n': "this train event has no 'loss'",
        '{"event": "eval", "step": 3, "eval_loss": null}\n': "eval_loss=None is not a number",
    }
    for bad, reason in damages.items():
        with open(path, "w") as f:
            f.writelines(good[:2] + [bad] + good[2:])
        with pytest.raises(MetricsError) as e:
            plots.plot_runs([workdir])
        assert str(e.value).startswith(f"{path}:3: {reason}") and "\n" not in str(e.value)
    assert not os.path.exists(os.path.join(workdir, "metrics.png"))


def test_a_step_logged_twice_keeps_its_later_record(tmp_path):
    first = recorded_run(tmp_path / "first", 6, eval_every=3)
    resumed = recorded_run(tmp_path / "resumed", 6, first_step=3, eval_every=3, shift=1.0)  # steps 4..6 again
    with open(os.path.join(first, "metrics.jsonl"), "a") as f:
        f.write(open(os.path.join(resumed, "metrics.jsonl")).read())
    events = plots.read_events(os.path.join(first, "metrics.jsonl"))
    assert list(events["train"]) == [1, 2, 3, 4, 5, 6] and list(events["eval"]) == [3, 6]
    assert [round(e["loss"], 6) for e in events["train"].values()] == [5.9, 5.8, 5.7, 6.6, 6.5, 6.4]
    assert [round(e["eval_loss"], 6) for e in events["eval"].values()] == [6.2, 6.9]


def test_several_runs_overlay_from_the_command_line(tmp_path):
    a = recorded_run(tmp_path / "a" / "run", 6, eval_every=3)
    b = recorded_run(tmp_path / "b" / "run", 4, shift=0.5)
    # The CLI in a process of its own, which must not import jax or pyplot (a tool, and no display needed).
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['tools/plot_metrics.py', {a!r}, {b!r}]\n"
        "runpy.run_path('tools/plot_metrics.py', run_name='__main__')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib') or m == 'matplotlib.pyplot'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"wrote {a}/metrics.png", "[]"]  # the first DIR's metrics.png
    assert_png(os.path.join(a, "metrics.png"))
    assert not os.path.exists(os.path.join(b, "metrics.png"))
    # Two folders named "run": the legend names each by its path, one colour per run.
    ax_loss, ax_lr = plots.figure(plots.read_runs([a, b])).axes[:2]
    loss_lines = {line.get_label(): line.get_color() for line in ax_loss.get_lines()}
    assert loss_lines == {f"{a} train": "C0", f"{a} eval": "C0", f"{b} train": "C1"}
    assert [t.get_text() for t in ax_lr.get_legend().get_texts()] == [a, b]


def test_the_tokens_axis_needs_one_tokens_per_step(tmp_path):
    a = recorded_run(tmp_path / "a", 3)
    b = recorded_run(tmp_path / "b", 3)
    record = json.loads(REAL_CONFIG_JSON.read_text())
    record["derived"]["tokens_per_step"] *= 2
    (tmp_path / "b" / "config.json").write_text(json.dumps(record))
    fig = plots.figure(plots.read_runs([a, b]))
    assert fig.axes[0].get_title() == "loss (no tokens axis: the runs differ in tokens/step)"
    os.remove(tmp_path / "b" / "config.json")
    fig = plots.figure(plots.read_runs([a, b]))
    assert fig.axes[0].get_title() == "loss (no tokens axis: no config.json in b)"
    assert not fig.axes[0].child_axes


def test_a_missing_metrics_file_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/plot_metrics.py", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1
    reason = "no such file (a jaxgpt workdir holds one from its first logged step)"
    assert proc.stderr == f"error: {tmp_path}/metrics.jsonl: {reason}\n"
    assert not os.path.exists(tmp_path / "metrics.png")


def test_other_bad_inputs_are_one_line_errors(tmp_path):
    run = recorded_run(tmp_path / "run", 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"event": "eval", "step": 0, "eval_loss": 9.0}\n')
    (tmp_path / "bad_config").mkdir()
    shutil.copy(os.path.join(run, "metrics.jsonl"), tmp_path / "bad_config")
    (tmp_path / "bad_config" / "config.json").write_text('{"derived": ')
    (tmp_path / "other_json").mkdir()
    shutil.copy(os.path.join(run, "metrics.jsonl"), tmp_path / "other_json")
    (tmp_path / "other_json" / "config.json").write_text('{"derived": [256]}')
    cases = [
        (([str(tmp_path / "empty")],), f"{tmp_path}/empty/metrics.jsonl: holds no train events yet"),
        (([str(tmp_path / "bad_config")],), f"{tmp_path}/bad_config/config.json: cannot read it as JSON"),
        (([str(tmp_path / "other_json")],), f"{tmp_path}/other_json/config.json: derived.tokens_per_step=None is"),
        (([os.path.join(run, "config.json")],), f"{run}/config.json: not a run directory"),
        (([run], str(tmp_path / "plot.xyz")), f"{tmp_path}/plot.xyz: the extension 'xyz' names no image format"),
        (([run], str(tmp_path)), f"{tmp_path}: is a directory"),
        (([],), "no run given"),
    ]
    for args, message in cases:
        with pytest.raises(MetricsError) as e:
            plots.plot_runs(*args)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["bad_config", "empty", "other_json", "run"]  # nothing written anywhere
    # A metrics .jsonl named directly is its run; the plot goes beside it.
    assert plots.plot_runs([os.path.join(run, "metrics.jsonl")]) == os.path.join(run, "metrics.png")
