"""tutorials/instruction_tuning.sh, small (SMALL=1), end to end: the data prepared in Modalities' format, a warm start,
loss masks that count exactly the assistant's replies, and chat replies that follow the instruction afterwards.

One subprocess runs the script as a user would (the `python` of this venv first on PATH, one CPU device) with its
working folder in tmp_path, so the repository stays clean; the tests below read what it wrote.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "tutorials" / "instruction_tuning.sh"
FINETUNE_STEPS, UNMASKED_STEPS = 500, 20  # the script's SMALL=1 sizes


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("tutorial") / "work"
    env = dict(os.environ, SMALL="1", WORK=str(work))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    # one device, as on a user's CPU: conftest's 8 fake devices would make every global batch 8 times larger
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work


def _results(work) -> dict[str, dict]:
    with open(work / "results.jsonl") as f:
        return {row["label"]: row for row in map(json.loads, f)}


def _train_events(workdir) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [e for e in map(json.loads, f) if e["event"] == "train"]


def test_the_data_is_prepared_in_modalities_layout_with_every_word_known(work):
    from jaxgpt.data.tokenize import Encoding, load_tokenizer

    (prepared,) = (work / "prepared").iterdir()
    for split in ("train", "val"):
        assert len(list(prepared.glob(f"conversations_{split}.*.pbin"))) == 1, sorted(os.listdir(prepared))
    # the word-level tokenizer covers the chat template and every conversation: no [UNK] in what was packed
    tokenizer = load_tokenizer(work / "tokenizer" / "tokenizer.json", encoding=Encoding(specials=("^", "$")))
    (chats,) = prepared.glob("conversations_train.*.jsonl")
    texts = [json.loads(line)["chat"] for line in chats.read_text().splitlines()]
    assert all(tokenizer.token_id("[UNK]") not in ids for ids in tokenizer.encode_batch(texts))


def test_only_the_masked_run_counts_and_it_counts_the_assistant_replies(work):
    masked, unmasked = _train_events(work / "runs" / "masked"), _train_events(work / "runs" / "unmasked")
    assert [e["step"] for e in masked] == list(range(1, FINETUNE_STEPS + 1))
    all_targets = 16 * 64  # 16 conversations of 64 targets a step
    assert all(0 < e["tokens_counted"] < all_targets / 4 for e in masked)  # a reply is 2 of a window's 64 targets
    assert len(unmasked) == UNMASKED_STEPS and not any("tokens_counted" in e for e in unmasked)
    # check_masks.py recomputed every step's count from its batch with jaxgpt.data.sft.loss_mask: all equal
    masks = _results(work)["masks"]
    assert masks["steps_equal"] == masks["steps"] == FINETUNE_STEPS
    assert masks["counted"] == sum(e["tokens_counted"] for e in masked)


def test_fine_tuning_turns_the_pretrained_model_into_one_that_answers(work):
    results = _results(work)
    before, after = results["before (pretrained)"], results["after (masked)"]
    assert before["total"] == after["total"] == 100
    assert after["accuracy"] > before["accuracy"]
    assert after["accuracy"] > after["chance"]


def test_the_chat_command_gives_the_replies_evaluate_scored(work):
    rows = [json.loads(line)["messages"] for line in (work / "held_out.jsonl").read_text().splitlines()]
    single = [i for i, messages in enumerate(rows) if len(messages) == 2][:3]
    scored = _results(work)["after (masked)"]["replies"]
    assert (work / "chat_replies.txt").read_text().splitlines() == [scored[i] for i in single]
