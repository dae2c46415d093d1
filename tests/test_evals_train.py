"""Downstream tasks in the training loop (train.eval_tasks) and `jaxgpt eval` on the run's checkpoints: the in-loop
metrics equal the offline ones of the same step, the banner prices them, metrics.png draws them, and a task file that
changed is refused."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, read_metrics, tiny_config

from jaxgpt import checkpoint, cli, rundir, train
from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.errors import ConfigError
from jaxgpt.evals.run import evaluate_tasks, flat_metrics

CLOZE = str(REPO / "data" / "evals" / "redpajama_cloze.jsonl")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    mc = tmp_path_factory.mktemp("tasks") / "mc.jsonl"
    rows = [{"context": f"Item {i}: the", "choices": ["cat", "dog sat", "Zürich"], "label": i % 3} for i in range(6)]
    mc.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return [f"cloze:cloze:{CLOZE}@12", f"mc:multiple_choice:{mc}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tasks):
    workdir = str(tmp_path_factory.mktemp("run"))
    train.run(tiny_config(**{"train.eval_tasks": ",".join(tasks)}), workdir)
    return workdir


def test_in_loop_metrics_are_logged_at_every_evaluation_and_drawn(run):
    evals = {e["step"]: e for e in read_metrics(run) if e["event"] == "eval"}
    assert sorted(evals) == [3, 6]
    for event in evals.values():
        assert {"eval_loss", "eval/cloze/acc", "eval/cloze/perplexity", "eval/mc/acc", "eval/mc/acc_norm"} <= set(event)
        assert "eval/mc/acc_stderr" in event and 0.0 <= event["eval/mc/acc"] <= 1.0
    assert os.path.exists(rundir.path(run, rundir.PLOT))
    with open(rundir.path(run, rundir.TASKS)) as f:
        assert set(json.load(f)) == {"cloze", "mc"}


def test_in_loop_equals_jaxgpt_eval_of_the_same_checkpoint(run, tasks, capsys):
    """The loop scores the params of its step; `jaxgpt eval --step` scores that checkpoint: the same numbers."""
    logged = {e["step"]: e for e in read_metrics(run) if e["event"] == "eval"}[6]
    model, _ = checkpoint.load(run, 6)
    offline = flat_metrics(evaluate_tasks(model, load_tokenizer(rundir.tokenizer_path(run)), tasks))
    assert offline == pytest.approx({k: logged[k] for k in offline}, rel=1e-6)
    cli.run(["eval", f"--workdir={run}", "--step=6", *(f"--task={t}" for t in tasks), "--mesh=1,1,1"])
    out = capsys.readouterr().out
    assert "cloze" in out and "acc_norm" in out and f"wrote {run}/evals/step_6.json" in out
    with open(os.path.join(run, "evals", "step_6.json")) as f:
        written = json.load(f)
    assert written["step"] == 6 and written["tasks"]["mc"]["requests"] == 6
    assert flat_metrics(written["tasks"]) == pytest.approx(offline, rel=1e-6)


def test_the_banner_prices_the_tasks_and_a_run_without_validation_data_scores_them_alone(tmp_path, tasks, capsys):
    workdir = str(tmp_path)
    overrides = {"train.eval_tasks": (tasks[0],), "data.val_path": "", "train.num_steps": 2, "train.eval_every": 2}
    train.run(tiny_config(**overrides), workdir)
    assert "1 downstream task (" in capsys.readouterr().out
    [event] = [e for e in read_metrics(workdir) if e["event"] == "eval"]
    assert "eval_loss" not in event and "eval/cloze/acc" in event
    assert os.path.exists(rundir.path(workdir, rundir.PLOT))


def test_a_task_file_changed_since_the_run_scored_it_is_refused(tmp_path):
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"context": "one two", "target": " three"}) + "\n")
    workdir = str(tmp_path / "run")
    cfg = tiny_config(**{"train.eval_tasks": f"t:cloze:{task}", "train.num_steps": 2, "train.eval_every": 1})
    train.run(cfg, workdir, stop_after=1)
    task.write_text(json.dumps({"context": "one two", "target": " four"}) + "\n")
    with pytest.raises(ConfigError, match=r"t.jsonl is not the file this run evaluated as 't' before"):
        train.run(cfg, workdir)


def test_bad_task_settings_fail_before_the_run_starts(tmp_path):
    with pytest.raises(Exception, match=r"train.eval_tasks=.*unknown kind 'mcq'"):
        train.run(tiny_config(**{"train.eval_tasks": "a:mcq:x.jsonl"}), str(tmp_path / "a"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "a", "choices": ["x", "y"], "label": 5}) + "\n")
    with pytest.raises(ConfigError, match=r"train.eval_tasks: .*bad.jsonl:1: field 'label'=5 is outside"):
        train.run(tiny_config(**{"train.eval_tasks": f"b:multiple_choice:{bad}"}), str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_jaxgpt_eval_of_an_hf_export_equals_the_workdir(run, tasks, tmp_path, capsys):
    """--hf=FOLDER reads the exported folder back through the same scoring: the numbers of the checkpoint."""
    from jaxgpt.interop.export import to_hf

    folder = str(tmp_path / "hf")
    to_hf(run, folder, step=6)
    out = str(tmp_path / "hf.json")
    cli.run(["eval", f"--hf={folder}", *(f"--task={t}" for t in tasks), f"--out={out}", "--mesh=2,1,1"])
    with open(out) as f:
        from_hf = flat_metrics(json.load(f)["tasks"])
    model, _ = checkpoint.load(run, 6)
    direct = flat_metrics(evaluate_tasks(model, load_tokenizer(rundir.tokenizer_path(run)), tasks))
    assert from_hf == pytest.approx(direct, rel=1e-5)


def test_jaxgpt_eval_as_a_command(run, tasks, tmp_path):
    """The console command end to end: a table and the JSON on success; a bad task file is one line and status 1."""
    cmd = [sys.executable, "-c", "import sys; from jaxgpt.cli import main; main(sys.argv[1:])", "eval"]
    out = str(tmp_path / "r.json")
    ok = subprocess.run(
        [*cmd, f"--workdir={run}", "--step=6", f"--task={tasks[1]}", "--mesh=1,1,1", f"--out={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "acc_norm" in ok.stdout and f"wrote {out}" in ok.stdout
    with open(out) as f:
        assert json.load(f)["tasks"]["mc"]["requests"] == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "a", "choices": ["x", ""], "label": 0}) + "\n")
    failed = subprocess.run(
        [*cmd, f"--workdir={run}", f"--task=b:multiple_choice:{bad}"], cwd=REPO, capture_output=True, text=True
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:1: field 'choices' entry 1")
