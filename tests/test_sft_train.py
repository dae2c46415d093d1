"""Instruction tuning end to end: the packed chats Modalities wrote, trained with loss masks from the command line,
evaluated with the same masks, resumed exactly, and chatted with."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TEST_DATA, losses_in_order, read_metrics, tiny_cli

from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.data.sft import loss_mask

CHATS = TEST_DATA / "sft" / "expected" / "chat_553cbc2"
TRAIN, TEST = CHATS / "chat_train.553cbc2.pbin", CHATS / "chat_test.553cbc2.pbin"
RECIPE = CHATS / "instruction_chat_template_config.553cbc2.yaml"
SFT = [
    f"--config.data.train_path={TRAIN}",
    f"--config.data.val_path={TEST}",
    "--config.data.reuse_last_target=False",
    f"--config.data.chat_template_file={RECIPE}",
    "--config.train.num_steps=4",
    "--config.train.eval_every=2",
    "--config.checkpoint.every=2",
    "--config.train.eval_steps=0",
]


def _train(workdir, *extra, markers="('^', '$')", stop_after=None, check=True):
    # one override of the tuple: absl's config flags join the values of a tuple flag given twice
    cmd = tiny_cli(workdir, *SFT, f"--config.data.loss_mask_tokens={markers}", *extra, stop_after=stop_after)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=check, cwd=REPO)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft") / "run"
    _train(workdir)
    return workdir


def test_the_loss_counts_only_assistant_targets(sft_run):
    windows = PackedWindowSource(TRAIN, seq_len=64, reuse_last_target=False)
    counted = loss_mask(windows.read_windows(np.arange(len(windows)))[:, 1:], 61, 3).sum(axis=1)
    train = [e for e in read_metrics(sft_run) if e["event"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3, 4]
    for e in train:  # 8 windows a step, out of 35: what a step counts is what its windows hold
        assert 0 < e["tokens_counted"] < 8 * 64 and np.isfinite(e["loss"])
    assert max(e["tokens_counted"] for e in train) <= np.sort(counted)[-8:].sum()
    evals = [e for e in read_metrics(sft_run) if e["event"] == "eval"]
    test = PackedWindowSource(TEST, seq_len=64, reuse_last_target=False)
    expected = loss_mask(test.read_windows(np.arange(len(test)))[:, 1:], 61, 3).sum()
    assert [e["eval_tokens"] for e in evals] == [expected, expected]  # the test split's assistant targets, all


def test_the_run_records_its_chat_recipe_and_chats(sft_run):
    assert (sft_run / "chat_template.yaml").read_bytes() == RECIPE.read_bytes()
    # no --max_new_tokens: --chat's default fits the 64-token context (plain generate's 128 would not)
    cmd = [sys.executable, "-m", "jaxgpt.generate", f"--workdir={sft_run}", "--chat"]
    proc = subprocess.run([*cmd, "--prompt=Hi!", "--prompt=Wie geht's?"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.splitlines()
    assert len(replies) == 2 and "Assistant" not in proc.stdout  # the replies alone, not the rendered prompt


def test_a_masked_run_resumes_exactly(sft_run, tmp_path):
    _train(tmp_path / "run", stop_after=2)
    _train(tmp_path / "run")
    assert losses_in_order(tmp_path / "run") == losses_in_order(sft_run)


def test_marker_and_template_errors_are_one_line(tmp_path):
    proc = _train(tmp_path / "a", markers="('^^^', '$')", check=False)
    assert proc.returncode == 1 and "data.loss_mask_tokens[0]='^^^' is not a token of" in proc.stderr, proc.stderr
    proc = _train(tmp_path / "b", markers="('^',)", check=False)
    assert proc.returncode == 1 and "must be () or two different tokens" in proc.stderr, proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("{% endif %}", "{% endfi %}", 1))
    proc = _train(tmp_path / "c", f"--config.data.chat_template_file={bad}", check=False)
    assert proc.returncode == 1 and "data.chat_template_file:" in proc.stderr and "syntax error" in proc.stderr
    assert "Traceback" not in proc.stderr
