"""tests/data/checkpoint_v0_1 holds a run stopped at step 4 of 8, written by jaxgpt before the package was reshaped
(make.py there says how). Every later version must load it with the same logits and resume it to the losses of the
run that was never stopped: it stands for the checkpoints users already have."""

import json
import shutil

import numpy as np
import pytest
from conftest import REPO, TEST_DATA, assert_close

from jaxgpt import checkpoint, config, train
from jaxgpt.errors import CheckpointError

FIXTURE = TEST_DATA / "checkpoint_v0_1"
RECORD = json.loads((FIXTURE / "fixture.json").read_text())
CONFIG_JSON = "checkpoints/4/config/metadata"  # the checkpoint's saved run config (an Orbax JSON item)


def fixture_config():
    """The config the fixture was trained with, by today's config files."""
    cfg = config.load_config_file(REPO / "configs" / "tiny.py")
    for key, value in RECORD["overrides"].items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg.data.train_path = str(FIXTURE / "train.pbin")  # data paths may change on resume
    cfg.data.val_path = str(FIXTURE / "val.pbin")
    return cfg


def copy_of_the_run(tmp_path, edit=None):
    """The fixture's workdir in tmp_path, its saved config passed through `edit(dict)` when given."""
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", workdir)
    if edit is not None:
        saved = json.loads((workdir / CONFIG_JSON).read_text())
        edit(saved)
        (workdir / CONFIG_JSON).write_text(json.dumps(saved))
    return workdir


def losses_in_order(workdir):
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(e["event"], e["step"], e.get("loss", e.get("eval_loss"))) for e in events]


def assert_same_losses(actual, expected):
    assert [(kind, step) for kind, step, _ in actual] == [(kind, step) for kind, step, _ in expected]
    # not equality: the fixture's numbers were computed on one CPU, this run may be on another, which adds each
    # token's logsumexp over the 256 vocab rows and the mean over a step's 512 tokens in another order
    assert_close([v for *_, v in actual], [v for *_, v in expected], depth=256 + 512)


def test_the_fixture_loads_with_its_logits():
    model, cfg = checkpoint.load(FIXTURE / "run")
    logits = np.asarray(model(np.load(FIXTURE / "tokens.npy")))
    assert_close(logits, np.load(FIXTURE / "logits.npy"), depth=256)  # the MLP hidden F: a logit's longest sum
    assert cfg.model.n_embd == 32 and cfg.model.attn == "causal"  # a knob added after the fixture: its default


def test_the_fixture_resumes_with_the_losses_of_the_uninterrupted_run(tmp_path):
    workdir = copy_of_the_run(tmp_path)
    train.run(fixture_config(), str(workdir))
    assert_same_losses(losses_in_order(workdir), [tuple(e) for e in RECORD["uninterrupted_losses"]])


def test_a_knob_the_checkpoint_predates_reads_as_its_default(tmp_path):
    """A checkpoint without a key loads and resumes as if it held the key's default (here: model.qk_norm=False)."""
    workdir = copy_of_the_run(tmp_path, edit=lambda saved: saved["model"].pop("qk_norm"))
    model, cfg = checkpoint.load(workdir)
    assert cfg.model.qk_norm is False and model.h[0].attn.q_norm is None
    train.run(fixture_config(), str(workdir), stop_after=5)
    assert_same_losses(losses_in_order(workdir), [tuple(e) for e in RECORD["uninterrupted_losses"]][:6])


def test_a_knob_of_a_newer_jaxgpt_is_refused_naming_it(tmp_path):
    workdir = copy_of_the_run(tmp_path, edit=lambda saved: saved["model"].update(sliding_window=64))
    message = r"holds config key\(s\) \['model.sliding_window'\] that this jaxgpt does not know"
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(workdir)
    with pytest.raises(CheckpointError, match=message):
        train.run(fixture_config(), str(workdir))
