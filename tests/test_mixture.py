"""Weighted mixtures (data.mixture): the order as a pure function of (seed, step), host counts, proportions, epochs per
component, staged weights, resume, bad input, and the eval loss per component."""

import json
import os
import pickle
import re
import struct
import subprocess

import numpy as np
import pytest
from conftest import (
    REPO,
    STEPS,
    TEST_DATA,
    TRAIN_PBIN,
    VAL_PBIN,
    assert_trees_equal,
    final_params,
    read_metrics,
    tiny_cli,
    tiny_config,
    train_losses,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgpt import plots, train
from jaxgpt.config import DataConfig
from jaxgpt.data.loader import mixture
from jaxgpt.data.loader.mixture import Mixture, block_counts, parse_components, parse_stages
from jaxgpt.data.loader.pipeline import host_train_dataset, process_rows
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.errors import CheckpointError, ConfigError, PackedDataError
from jaxgpt.train import recorder
from jaxgpt.train.setup import setup

S = 4  # sequence length of the synthetic components
BASE = 10_000  # component c's tokens start at c * BASE, so a row's first token names its component and window


def write_pbin(path, tokens, width: int = 2) -> str:
    data = np.asarray(tokens, {2: "<u2", 4: "<u4"}[width]).tobytes()
    path.write_bytes(struct.pack("<QI", len(data), width) + data + pickle.dumps([(0, len(data))], protocol=4))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    """Three components of 40, 12 and 90 windows: window i of component c starts with token c * BASE + i * S."""
    folder = tmp_path_factory.mktemp("components")
    return [write_pbin(folder / f"c{c}.pbin", c * BASE + np.arange(n * S + 1)) for c, n in enumerate((40, 12, 90))]


def make_mixture(files, weights=(0.5, 0.3, 0.2), stages=(), block=10) -> Mixture:
    sources = [PackedWindowSource(f, S) for f in files]
    return Mixture(["a", "b", "c"][: len(files)], sources, [(1, list(weights)), *stages], block)


def decode(batch) -> tuple[np.ndarray, np.ndarray]:
    """(component, window) of each row of a host batch."""
    first = np.asarray(batch["inputs"][:, 0])
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    return first // BASE, (first % BASE) // S


def rows_of(mix, G, seed, steps, rows=None, start_step=0) -> np.ndarray:
    """[steps, rows, 2]: (component, window) of every row."""
    ds = host_train_dataset(mix, global_batch_size=G, seed=seed, rows=rows or (0, G), start_step=start_step)
    return np.stack([np.stack(decode(ds[i]), axis=-1) for i in range(steps)])


# The knobs' syntax
# ------------------------------------------------------------------------------------------------------------------


def test_text_and_list_forms_are_one_mixture(files, tmp_path):
    text = f"web:{files[0]}+{files[1]}:0.7,code:{files[2]}:0.3"
    as_tuples = [("web", [files[0], files[1]], 0.7), ("code", files[2], 0.3)]
    as_dicts = [
        {"name": "web", "paths": f"{files[0]}+{files[1]}", "weight": "0.7"},
        {"name": "code", "paths": [files[2]], "weight": 0.3},
    ]
    expected = [("web", (files[0], files[1]), 0.7), ("code", (files[2],), 0.3)]
    for value in (text, as_tuples, as_dicts, text.split(",")):
        assert parse_components(value, "data.mixture") == expected
    assert parse_stages("5:web=1,code=3;9:code=1,web=0", ["web", "code"]) == [(5, [1.0, 3.0]), (9, [0.0, 1.0])]
    assert parse_stages([(5, {"web": 1, "code": 3}), [9, {"web": 0, "code": 1}]], ["web", "code"]) == [
        (5, [1.0, 3.0]),
        (9, [0.0, 1.0]),
    ]
    folder = os.path.dirname(files[0])
    assert mixture.resolve_files("x", [folder], "k") == sorted(files)  # a directory: its .pbin files
    assert mixture.resolve_files("x", [os.path.join(folder, "c[02].pbin")], "k") == [files[0], files[2]]  # a glob


def test_weights_are_normalised(files):
    assert np.allclose(make_mixture(files, (5, 3, 2)).weights_SxC, make_mixture(files, (0.5, 0.3, 0.2)).weights_SxC)
    np.testing.assert_array_equal(make_mixture(files, (5, 3, 2)).counts_SxC, [[5, 3, 2]])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.001, 1000), min_size=1, max_size=8), st.integers(8, 4096))
def test_block_counts_sum_to_the_block_and_stay_within_one_sequence_of_each_share(weights, block):
    counts = block_counts(weights, block)
    shares = np.asarray(weights) / np.sum(weights) * block
    assert counts.sum() == block and np.all(np.abs(counts - shares) < 1)


# The order
# ------------------------------------------------------------------------------------------------------------------


def test_order_is_a_pure_function_of_seed_and_step(files):
    mix = make_mixture(files, stages=[(7, [0.2, 0.2, 0.6])])
    sequential = rows_of(mix, 8, seed=3, steps=20)
    ds = host_train_dataset(mix, global_batch_size=8, seed=3, rows=(0, 8))
    for k in np.random.default_rng(0).permutation(20):  # random access, in any order, equals the sequence
        np.testing.assert_array_equal(np.stack(decode(ds[int(k)]), axis=-1), sequential[k])
    for k in (1, 6, 7, 13):  # a restart at step k (a resume) continues it, across the stage boundary at step 7
        np.testing.assert_array_equal(
            rows_of(make_mixture(files, stages=[(7, [0.2, 0.2, 0.6])]), 8, 3, 20 - k, start_step=k), sequential[k:]
        )
    assert not np.array_equal(rows_of(mix, 8, seed=4, steps=20), sequential)


@pytest.mark.parametrize("hosts", [2, 4, 8])
def test_hosts_together_read_the_global_batch(files, hosts):
    mix, G = make_mixture(files, stages=[(4, [0.1, 0.1, 0.8])]), 8
    whole = rows_of(mix, G, seed=5, steps=12)
    parts = [rows_of(mix, G, seed=5, steps=12, rows=process_rows(G, h, hosts)) for h in range(hosts)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.2), (0.7, 0.2, 0.1), (1 / 3, 1 / 3, 1 / 3), (0.05, 0.9, 0.05)])
@pytest.mark.parametrize("G", [8, 64])
def test_any_1000_steps_hold_each_component_within_1_percent_and_every_block_exactly(weights, G):
    """The property of the issue at the default block size, on the labels alone (no files needed)."""
    block, steps = DataConfig().mixture_block, 3000
    counts = block_counts(weights, block)
    order = mixture.BlockOrder(counts[None], [0], block, seed=11)
    labels, _ = order.draws(0, steps * G)
    onehot_TxC = labels[:, None] == np.arange(3)
    per_step_SxC = onehot_TxC.reshape(steps, G, 3).sum(axis=1)
    cum = np.concatenate([np.zeros((1, 3), np.int64), np.cumsum(per_step_SxC, axis=0)])
    shares = (cum[1000:] - cum[:-1000]) / (1000 * G)  # every window of 1000 consecutive steps
    assert np.abs(shares - np.asarray(weights) / sum(weights)).max() <= 0.01
    whole_blocks = onehot_TxC[: len(labels) // block * block].reshape(-1, block, 3).sum(axis=1)
    assert (whole_blocks == counts).all()


def test_draws_counted_in_o1_are_what_the_order_drew(files):
    """drawn_before(t) (O(#stages)) equals counting the labels of sequences 0..t-1; each component's draws are
    numbered 0, 1, 2, ... in sequence order, across blocks, cut blocks and stages."""
    counts = np.array([block_counts(w, 10) for w in ([5, 3, 2], [1, 1, 8], [0, 1, 1])])
    order = mixture.BlockOrder(counts, [0, 37, 64], 10, seed=2)
    labels, draws = order.draws(0, 200)
    for c in range(3):
        np.testing.assert_array_equal(draws[labels == c], np.arange(np.sum(labels == c)))
    for t in range(0, 201, 7):
        np.testing.assert_array_equal(order.drawn_before(t), np.bincount(labels[:t], minlength=3))
    assert not (labels[64:] == 0).any()  # the third stage rests component 0
    assert order.drawn_before(10**15).sum() == 10**15  # no loop over the steps before


def test_each_component_runs_through_fresh_epochs_on_its_own(files):
    """b has 12 windows: every 12 of its draws are a permutation of them, a new one each time; and its n-th draw is
    the same window whatever the other components hold or weigh."""
    steps = 60
    seen = rows_of(make_mixture(files), 8, seed=1, steps=steps).reshape(-1, 2)
    b_windows = seen[seen[:, 0] == 1, 1]
    epochs = b_windows[: len(b_windows) // 12 * 12].reshape(-1, 12)
    assert len(epochs) >= 3
    for e in epochs:
        assert sorted(e.tolist()) == list(range(12))
    assert len({tuple(e) for e in epochs}) == len(epochs)
    other = make_mixture([files[2], files[1], files[0]], weights=(0.3, 0.4, 0.3))  # a and c swapped, b reweighted
    seen_other = rows_of(other, 8, seed=1, steps=steps).reshape(-1, 2)
    b_other = seen_other[seen_other[:, 0] == 1, 1]
    n = min(len(b_windows), len(b_other))
    np.testing.assert_array_equal(b_other[:n], b_windows[:n])
    passes = make_mixture(files).epochs(8, seed=1)(steps)  # what metrics.jsonl logs after `steps` steps
    assert passes["data/epoch/b"] == pytest.approx(len(b_windows) / 12)
    assert passes["data/epoch/a"] == pytest.approx(np.sum(seen[:, 0] == 0) / 40)


def test_a_stage_changes_the_weights_from_its_step_and_leaves_the_steps_before_alone(files):
    G, stage_step = 8, 11
    plain = rows_of(make_mixture(files), G, seed=0, steps=40)
    staged = rows_of(make_mixture(files, stages=[(stage_step, [0.0, 0.5, 0.5])]), G, seed=0, steps=40)
    np.testing.assert_array_equal(staged[: stage_step - 1], plain[: stage_step - 1])  # steps 1..10: batches 0..9
    after = staged[stage_step - 1 :, :, 0]
    assert not (after == 0).any()  # a rests from step 11 on
    assert abs(np.mean(after == 1) - 0.5) <= 1 / 10  # within one sequence per block of 10


# Bad input: one line naming the component, before anything is written
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("odd")
    (folder / "empty").mkdir()
    return {
        "wide": write_pbin(folder / "wide.pbin", np.arange(2000), width=4),
        "short": write_pbin(folder / "short.pbin", np.arange(64 * 20 + 1)),  # 20 windows of 64
        "empty": str(folder / "empty"),
        "missing": str(folder / "missing.pbin"),
    }


BAD = [  # (overrides as format strings over the files, error kind, what the one line must say)
    ({"data.mixture": "a:{train}:1,b:{missing}:1"}, ConfigError, "component 'b': no such file .*missing.pbin"),
    ({"data.mixture": "a:{train}:1,b:{empty}:1"}, ConfigError, "component 'b': directory .* holds no .pbin file"),
    ({"data.mixture": "a:{train}:1,b:{empty}/*.pbin:1"}, ConfigError, "component 'b': .* matches no file"),
    ({"data.mixture": "a:{train}:0,b:{val}:1"}, ConfigError, "component 'a': weight '0' must be > 0"),
    ({"data.mixture": "a:{train}:-0.5,b:{val}:1"}, ConfigError, "component 'a': weight '-0.5' must be > 0"),
    ({"data.mixture": "a:{train}:lots,b:{val}:1"}, ConfigError, "component 'a': weight 'lots' is not a number"),
    ({"data.mixture": "a:{train}:nan,b:{val}:1"}, ConfigError, "component 'a': weight 'nan' is not a number"),
    ({"data.mixture": "a:{train}:1,a:{val}:1"}, ConfigError, "two components are named 'a'"),
    ({"data.mixture": "a:{train}:1,b:{wide}:1"}, PackedDataError, "component 'b' holds 4-byte tokens, component 'a'"),
    ({"data.mixture": "a:{train}:0.9,b:{short}:0.1"}, ConfigError, "component 'b' has 20 windows, fewer than the 51"),
    ({"data.mixture": "a:{train}:0.9999,b:{val}:0.0001"}, ConfigError, "'b' at weight 0.0001 gets no sequence"),
    ({"data.mixture": "a:{train}:1,b:{val}:1", "data.mixture_stages": "3:a=1,z=1"}, ConfigError, "names 'z', not a"),
    ({"data.mixture": "a:{train}:1,b:{val}:1", "data.mixture_stages": "3:a=1"}, ConfigError, "component 'b' no weight"),
    ({"data.mixture": "a:{train}:1,b:{val}:1", "data.mixture_stages": "3:a=1,b=x"}, ConfigError, "'b': weight 'x' is"),
    ({"data.mixture": "a:{train}:1,b:{val}:1", "data.mixture_stages": "1:a=1,b=1"}, ConfigError, "step 1 must be an"),
    (
        {"data.mixture": "a:{train}:1,b:{val}:1", "data.val_mixture": "a:{val},b:{missing}"},
        ConfigError,
        "component 'b'",
    ),
    ({"data.mixture_stages": "3:a=1"}, ConfigError, "data.mixture_stages='3:a=1' needs data.mixture"),
]


@pytest.mark.parametrize("overrides, kind, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_one_line_naming_the_component(odd_files, tmp_path, overrides, kind, message):
    names = {**odd_files, "train": TRAIN_PBIN, "val": VAL_PBIN}
    workdir = tmp_path / "run"
    with pytest.raises(kind) as e:
        setup(tiny_config(**{k: v.format(**names) for k, v in overrides.items()}), str(workdir), None)
    assert re.search(message, str(e.value)) and "\n" not in str(e.value), str(e.value)
    assert not workdir.exists()


# Runs: metrics, resume, eval per component
# ------------------------------------------------------------------------------------------------------------------

LOREM = str(TEST_DATA / "lorem_ipsum_long.pbin")
MIX = f"rp:{TRAIN_PBIN}:0.6,lorem:{LOREM}:0.3,test:{VAL_PBIN}:0.1"
STAGES = "4:rp=0.2,lorem=0.4,test=0.4"  # from step 4 on
VAL_MIX = f"test:{VAL_PBIN},lorem:{TEST_DATA / 'lorem_ipsum.pbin'}"


def mix_config(**overrides):
    return tiny_config(**{"data.mixture": MIX, "data.mixture_stages": STAGES, "data.val_mixture": VAL_MIX, **overrides})


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """STEPS uninterrupted steps of a 3-component mixture with a stage at step 4; what W&B was given."""
    workdir, logged = str(tmp_path_factory.mktemp("mixed")), []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recorder.Wandb, "log", lambda self, event: logged.append(event))
        train.run(mix_config(), workdir)
    return workdir, logged


def test_metrics_hold_epochs_and_eval_losses_per_component(mixed_run):
    workdir, wandb_events = mixed_run
    events = read_metrics(workdir)
    r = setup(mix_config(), workdir + "/unused", None)
    passes = r.train_src.epochs(r.plan.global_batch, seed=0)
    for e in (e for e in events if e["event"] == "train"):
        assert {k: v for k, v in e.items() if k.startswith("data/epoch/")} == passes(e["step"])
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [3, STEPS]
    for e in evals:  # 2 batches of 8 x 64 tokens from each component: the total is their mean
        assert e["eval_loss"] == pytest.approx((e["eval_loss/test"] + e["eval_loss/lorem"]) / 2, rel=1e-12)
    assert [e for e in wandb_events if e["event"] == "eval"] == evals  # W&B got the same events
    run = plots.read_run(workdir, "mixed")
    assert run.eval_parts() == ["test", "lorem"]
    labels = [line.get_label() for line in plots.figure([run]).axes[0].get_lines()]
    assert {"eval test", "eval lorem"} <= set(labels)


def test_eval_loss_of_a_component_is_its_file_evaluated_alone(mixed_run, tmp_path):
    alone = str(tmp_path)
    train.run(mix_config(**{"data.val_mixture": "", "data.val_path": VAL_PBIN}), alone, stop_after=3)
    (evaluated,) = [e for e in read_metrics(alone) if e["event"] == "eval"]
    (mixed,) = [e for e in read_metrics(mixed_run[0]) if e["event"] == "eval" and e["step"] == evaluated["step"]]
    assert evaluated["eval_loss"] == mixed["eval_loss/test"]


def test_a_run_resumed_from_the_command_line_across_a_stage_boundary_is_exact(mixed_run, tmp_path):
    workdir = str(tmp_path)
    train.run(mix_config(), workdir, stop_after=3)  # the checkpoint at step 3; steps 4..6 train on the stage's weights
    flags = [
        f"--config.data.{k}={v}" for k, v in (("mixture", MIX), ("mixture_stages", STAGES), ("val_mixture", VAL_MIX))
    ]
    done = subprocess.run(tiny_cli(workdir, *flags), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert train_losses(workdir) == train_losses(mixed_run[0])
    assert_trees_equal(final_params(workdir), final_params(mixed_run[0]))


def test_a_resume_refuses_another_mixture_but_takes_a_stage_after_its_step(mixed_run, tmp_path):
    workdir = str(tmp_path)
    train.run(mix_config(), workdir, stop_after=4)  # the checkpoint at step 4 drew under the stage of step 4
    refused = [  # (overrides, what the one line must say)
        ({"data.mixture": MIX.replace(":0.6,", ":0.5,")}, "data.mixture weights up to step 4"),
        ({"data.mixture_stages": "4:rp=0.3,lorem=0.3,test=0.4"}, "data.mixture weights up to step 4"),
        ({"data.mixture_stages": f"3:rp=1,lorem=1,test=1;{STAGES}"}, "data.mixture weights up to step 4"),
        ({"data.mixture": MIX.replace(f"lorem:{LOREM}", f"lorem:{TRAIN_PBIN}")}, "data.mixture components"),
        ({"data.mixture": "", "data.mixture_stages": ""}, "data.mixture: checkpoint rp 0.6, lorem 0.3, test 0.1 vs"),
        ({"data.mixture_block": 256}, "data.mixture_block: checkpoint 512 vs now 256"),
    ]
    for overrides, message in refused:
        with pytest.raises(CheckpointError, match=re.escape(message)) as e:
            train.run(mix_config(**overrides), workdir)
        assert "\n" not in str(e.value)
    train.run(mix_config(**{"data.mixture_stages": f"{STAGES};6:rp=1,lorem=0,test=0"}), workdir)  # after step 4
    resumed, straight = train_losses(workdir), train_losses(mixed_run[0])
    assert [resumed[s] for s in range(1, 6)] == [straight[s] for s in range(1, 6)]
    assert resumed[6] != straight[6]  # step 6 trained on the new stage


def test_a_mixture_record_in_the_checkpoint_data(mixed_run):
    with open(os.path.join(mixed_run[0], "config.json")) as f:
        assert json.load(f)["config"]["data"]["mixture"] == MIX
    r = setup(mix_config(), mixed_run[0] + "/unused", None)
    record = r.stream["mixture"]
    assert [c["name"] for c in record["components"]] == ["rp", "lorem", "test"]
    assert record["stages"] == [[1, [0.6, 0.3, 0.1]], [4, [0.2, 0.4, 0.4]]]
