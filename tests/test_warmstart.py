"""train.init_from: a new run starts from an earlier run's parameters (a jaxgpt workdir, PATH@STEP, or an HF folder),
with a fresh optimizer, step and schedule; the architecture must agree; a resume works as usual.

The source is tests/data/checkpoint_v0_1/run (a tiny run's checkpoint at step 4): nothing is trained to make one.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, TEST_DATA, assert_close, atol_for, random_params

from jaxgpt import checkpoint, config, sharding, train
from jaxgpt.data.loader import pipeline
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.errors import CheckpointError, WarmStartError
from jaxgpt.interop import export, warmstart
from jaxgpt.interop.params import flat_params
from jaxgpt.model import ModelConfig
from jaxgpt.train import optim
from jaxgpt.train.state import StateLayout, StepConfig

FIXTURE = TEST_DATA / "checkpoint_v0_1"
SOURCE = str(FIXTURE / "run")
OVERRIDES = json.loads((FIXTURE / "fixture.json").read_text())["overrides"]


def run_config(**overrides):
    """The fixture's model on its data, with settings a warm start is free to change: another lr, data seed and
    schedule length than the source run's."""
    cfg = config.load_config_file(REPO / "configs" / "tiny.py")
    for key, value in {**OVERRIDES, **overrides}.items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg.data.train_path = str(FIXTURE / "train.pbin")
    cfg.data.val_path = ""
    cfg.data.tokenizer_file = str(_tokenizer(pathlib.Path(tempfile.gettempdir()) / f"jaxgpt-warmstart-{os.getuid()}"))
    return cfg


def _tokenizer(directory, size=256):
    """A word-level tokenizer.json of `size` ids, the last <|endoftext|> (256: the fixture's vocabulary size)."""
    from tokenizers import Tokenizer, models

    path = directory / "tokenizer.json"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        vocab = {f"w{i}": i for i in range(size - 1)} | {"<|endoftext|>": size - 1}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
        tok.add_special_tokens(["<|endoftext|>"])
        tok.save(str(path))
    return path


def _layout(cfg):
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    return StateLayout.build(StepConfig.from_config(cfg, num_steps=10), mesh)


def _source_params(step=None):
    from flax import nnx

    model, _ = checkpoint.load(SOURCE, step)
    return flat_params(nnx.state(model, nnx.Param)), model


def _loss(model, windows_BxW) -> float:
    """Mean next-token cross-entropy of `model` on windows [B, T + 1], straight from its logits."""
    logp_BxTxV = jax.nn.log_softmax(model(jnp.asarray(windows_BxW[:, :-1])), axis=-1)
    targets_BxT = jnp.asarray(windows_BxW[:, 1:])
    return -float(jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1).mean())


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_first_logged_loss_is_the_source_models_loss_on_the_first_batch(tmp_path):
    cfg = run_config(**{"train.init_from": SOURCE, "optim.lr": 5e-3, "data.seed": 3, "train.num_steps": 1})
    train.run(cfg, str(tmp_path / "run"))
    first = [e for e in _metrics(tmp_path / "run") if e["event"] == "train"][0]
    assert first["step"] == 1
    # the run's first global batch (8 fake devices x 1 sequence), straight from the data, through the source model
    src = PackedWindowSource([cfg.data.train_path], cfg.data.seq_len, cfg.model.vocab_size)
    windows_BxW = src.read_windows(pipeline.batch_windows(len(src), 8, 3, 0, (0, 8)))
    want = _loss(_source_params()[1], windows_BxW)
    tolerance = atol_for(want, depth=256 + 512)  # logsumexp over the 256 vocab rows, mean over 512 tokens
    assert abs(first["loss"] - want) <= tolerance
    layout = _layout(cfg)  # what a run without init_from would have logged: measurably other
    fresh = _loss(layout.model(layout.init(cfg.train.seed).params), windows_BxW)
    assert abs(fresh - want) > 10 * tolerance, (fresh, want)
    # the schedule starts afresh (the source stopped at step 4 of 8): the run's own lr at its step 1
    schedule = optim.lr_schedule(optim.OptimConfig.from_config(cfg), 1)
    assert_close(first["lr"], float(schedule(0)), depth=1)  # one formula, maybe fused otherwise


def test_a_warm_started_run_resumes_exactly_and_records_init_from(tmp_path):
    cfg = run_config(**{"train.init_from": f"{SOURCE}@4", "train.num_steps": 4, "checkpoint.every": 2})
    train.run(cfg, str(tmp_path / "whole"))
    train.run(cfg, str(tmp_path / "split"), stop_after=2)
    train.run(cfg, str(tmp_path / "split"))  # resumes from its own step 2, not from the source
    whole, split = (
        [(e["step"], e["loss"]) for e in _metrics(tmp_path / d) if e["event"] == "train"] for d in ("whole", "split")
    )
    assert whole == split and len(whole) == 4
    record = json.loads((tmp_path / "split" / "config.json").read_text())
    assert record["config"]["train"]["init_from"] == f"{SOURCE}@4"
    # a resume keeps the run's origin: another source is refused; none (a command not repeating it) takes the saved one
    with pytest.raises(CheckpointError, match="train.init_from"):
        train.run(run_config(**{"train.init_from": SOURCE, "train.num_steps": 4}), str(tmp_path / "split"))
    train.run(cfg, str(tmp_path / "bare"), stop_after=2)
    train.run(run_config(**{"train.num_steps": 4, "checkpoint.every": 2}), str(tmp_path / "bare"))
    assert whole == [(e["step"], e["loss"]) for e in _metrics(tmp_path / "bare") if e["event"] == "train"]
    record = json.loads((tmp_path / "bare" / "config.json").read_text())
    assert record["config"]["train"]["init_from"] == f"{SOURCE}@4"


def test_round_trip_jaxgpt_hf_init_from_is_bit_identical(tmp_path):
    cfg = run_config()
    export.to_hf(SOURCE, str(tmp_path / "hf"), tokenizer_file=cfg.data.tokenizer_file)
    state = warmstart.init_state(_layout(cfg), 0, str(tmp_path / "hf"))
    got, (want, _) = flat_params(state.params), _source_params()
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert int(state.step) == 0
    assert all(not np.any(x) for x in jax.tree.leaves(jax.device_get(state.opt_state)) if np.ndim(x))  # fresh Adam


def test_the_model_options_must_agree_naming_the_key_and_both_values():
    m = ModelConfig.from_config(run_config())
    with pytest.raises(WarmStartError, match=r"model\.n_layer: the run has 3, .* 2") as e:
        warmstart.load(SOURCE, dataclasses.replace(m, n_layer=3, mlp="gelu"))
    assert "model.mlp: the run has 'gelu'" in str(e.value) and "'swiglu'" in str(e.value)
    with pytest.raises(WarmStartError, match=r"no checkpoint for step 7; available: \[4\]"):
        warmstart.load(f"{SOURCE}@7", m)
    with pytest.raises(WarmStartError, match="must be a step number"):
        warmstart.load(f"{SOURCE}@last", m)
    with pytest.raises(WarmStartError, match="neither a jaxgpt workdir"):
        warmstart.load(str(FIXTURE), m)


def test_a_bigger_vocab_takes_the_source_rows_and_the_init_for_the_rest():
    cfg = run_config(**{"model.vocab_size": 320})
    layout = _layout(cfg)
    fresh = flat_params(layout.init(5).params)
    got, (want, _) = flat_params(warmstart.init_state(layout, 5, SOURCE).params), _source_params()
    np.testing.assert_array_equal(got["wte.weight"][:256], want["wte.weight"])
    np.testing.assert_array_equal(got["wte.weight"][256:], fresh["wte.weight"][256:])


def test_export_hf_cli_writes_a_folder_and_refuses_cleanly(tmp_path):
    cfg = run_config()
    out = tmp_path / "hf"
    cmd = [sys.executable, str(REPO / "tools" / "export_hf.py"), f"--workdir={SOURCE}", f"--out={out}"]
    done = subprocess.run(
        cmd + [f"--tokenizer_file={cfg.data.tokenizer_file}", "--dtype=bfloat16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    again = subprocess.run(
        cmd + [f"--tokenizer_file={cfg.data.tokenizer_file}"], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith("error: --out=")
    assert "Traceback" not in again.stderr


def _with_new_tokens(tmp_path, source_dir, new=3):
    """The fixture's source with a tokenizer of 250 ids in `source_dir`, and the run's tokenizer: the same plus `new`
    special tokens (ids 250..), as `jaxgpt data add_special_tokens` writes it."""
    from jaxgpt.data.prepare.special_tokens import add_special_tokens

    theirs = _tokenizer(source_dir, size=250)
    ours = tmp_path / "run_tokenizer.json"
    add_special_tokens(str(theirs), str(ours), [f"<|chat{i}|>" for i in range(new)], 1000)
    return str(ours)


@pytest.mark.parametrize("source_kind", ["jaxgpt workdir, tied", "HF folder, untied lm_head"])
def test_rows_of_ids_new_in_the_runs_tokenizer_are_drawn_afresh_and_all_else_is_the_sources(
    source_kind, tmp_path, capfd
):
    from jaxgpt.interop import hf

    untied = source_kind.startswith("HF")
    cfg = run_config(**{"model.tie_embeddings": not untied})
    m = ModelConfig.from_config(cfg)
    src = tmp_path / "source"
    if untied:  # an HF folder: its tokenizer.json is what write_folder copies
        hf_tok = _tokenizer(tmp_path / "hf_tok", size=250)
        hf.write_folder(str(src), random_params(m, 0), m, tokenizer_file=str(hf_tok))
        want = random_params(m, 0)
    else:  # a jaxgpt workdir: its tokenizer.json is the run's record (rundir.TOKENIZER)
        shutil.copytree(SOURCE, src)
        want = _source_params()[0]
    ours = _with_new_tokens(tmp_path, src)
    layout = _layout(cfg)
    fresh = flat_params(layout.init(5).params)
    capfd.readouterr()
    got = flat_params(warmstart.init_state(layout, 5, str(src), ours).params)
    tables = ["wte.weight", "lm_head.weight"] if untied else ["wte.weight"]
    assert sorted(got) == sorted(want) and all(t in got for t in tables)
    for name in want:
        if name not in tables:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
            continue
        np.testing.assert_array_equal(got[name][:250], want[name][:250], err_msg=name)
        np.testing.assert_array_equal(got[name][250:253], fresh[name][250:253], err_msg=name)
        np.testing.assert_array_equal(got[name][253:], want[name][253:], err_msg=name)  # padded rows: as before
        assert not np.array_equal(want[name][250:253], fresh[name][250:253])  # the test can tell the two apart
    line = f"jaxgpt: 3 rows of {' and '.join(tables)} (ids 250..252, new in data.tokenizer_file) re-initialised"
    assert line in capfd.readouterr().err


def test_new_ids_beyond_the_models_table_and_a_source_without_tokenizer(tmp_path, capfd):
    src = tmp_path / "source"
    shutil.copytree(SOURCE, src)
    layout = _layout(run_config())
    with pytest.raises(WarmStartError, match=r"its 260 ids need 260 rows, model.vocab_size=256 has 256 \(10 ids"):
        warmstart.init_state(layout, 0, str(src), _with_new_tokens(tmp_path, src, new=10))
    # the fixture's own workdir records no tokenizer: every row it has is kept, and the run is told so
    got = flat_params(warmstart.init_state(layout, 0, SOURCE, str(tmp_path / "run_tokenizer.json")).params)
    assert "has no tokenizer.json: cannot tell which ids" in capfd.readouterr().err
    np.testing.assert_array_equal(got["wte.weight"], _source_params()[0]["wte.weight"])


def test_a_training_run_passes_its_tokenizer_to_the_warm_start(tmp_path, capfd):
    src = tmp_path / "source"
    shutil.copytree(SOURCE, src)
    ours = _with_new_tokens(tmp_path, src)
    cfg = run_config(**{"train.init_from": str(src), "train.num_steps": 1})
    cfg.data.tokenizer_file = ours
    train.run(cfg, str(tmp_path / "run"))
    assert "jaxgpt: 3 rows of wte.weight (ids 250..252" in capfd.readouterr().err
