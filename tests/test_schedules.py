"""optim.schedule: the shapes at their exact steps, the cosine as it always was, and wsd's point: a run extended in its
stable phase, or branched from it into a new workdir, equals bit for bit a run started with its train.num_steps."""

import dataclasses
import itertools
import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_equal, final_params, losses_in_order, read_metrics, tiny_config, train_losses

from jaxgpt import plots, train
from jaxgpt.errors import CheckpointError, ConfigError
from jaxgpt.train import optim, resume
from jaxgpt.train.optim import OptimConfig, lr_schedule

PEAK, FLOOR = 1.0, 0.1  # lr 1.0, min_lr_ratio 0.1: the float32 values below are exact


def lrs(cfg: OptimConfig, num_steps: int) -> np.ndarray:
    """The schedule at every count 0 .. num_steps - 1 (count s is step s + 1's lr), as float32."""
    return np.asarray(lr_schedule(cfg, num_steps)(jnp.arange(num_steps)), np.float32)


def wsd(**changes) -> OptimConfig:
    defaults = dict(lr=PEAK, min_lr_ratio=FLOOR, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    return OptimConfig(**{**defaults, **changes})


def todays_cosine(cfg: OptimConfig, num_steps: int):
    """jaxgpt's cosine schedule as it was before optim.schedule existed, frozen here: it must never change."""
    warm = min(cfg.warmup_steps, num_steps // 10)
    decay = max(1, num_steps - 1 - warm)
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = peak * (step + 1.0) / max(warm, 1)
        progress = jnp.clip((step - warm) / decay, 0.0, 1.0)
        cos_lr = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warm, warm_lr, cos_lr)

    return schedule


@pytest.mark.parametrize("num_steps", [1, 7, 24, 100, 1000])
@pytest.mark.parametrize("cfg", [OptimConfig(), OptimConfig(lr=1e-3, warmup_steps=10), OptimConfig(warmup_steps=0)])
def test_the_default_cosine_is_todays_bit_for_bit(cfg, num_steps):
    assert cfg.schedule == "cosine"
    expected = np.asarray(todays_cosine(cfg, num_steps)(jnp.arange(num_steps)), np.float32)
    np.testing.assert_array_equal(lrs(cfg, num_steps), expected)


def test_wsd_at_its_exact_steps():
    # 100 steps, decay_fraction 0.2: warmup steps 1-10, stable 11-80, decay 81-100 (counts 80-99)
    p = optim.phases(wsd(), 100)
    assert (p.warmup, p.stable_end, p.decay_start, p.num_steps) == (10, 80, 81, 100)
    for shape, first in (("linear", 1 - 1 / 20), ("1-sqrt", 1 - math.sqrt(1 / 20))):
        lr = lrs(wsd(decay_shape=shape), 100)
        np.testing.assert_allclose(lr[:10], np.arange(1, 11) / 10, rtol=1e-7)  # lr * s / W at step s
        assert lr[9] == PEAK and (lr[10:80] == PEAK).all()  # warmup's end and the stable phase: exactly lr
        assert lr[80] == pytest.approx(FLOOR + (PEAK - FLOOR) * first, rel=1e-6) and lr[80] < PEAK
        assert lr[99] == np.float32(FLOOR)  # the last step: the floor, exactly
        assert (np.diff(lr[79:]) < 0).all()  # falling at every decay step
    half = lrs(wsd(decay_shape="1-sqrt"), 100)[89]  # the 10th of 20 decay steps: p = 1/2
    assert half == pytest.approx(FLOOR + (PEAK - FLOOR) * (1 - math.sqrt(0.5)), rel=1e-6)
    linear_half = lrs(wsd(), 100)[89]
    assert linear_half == pytest.approx(FLOOR + (PEAK - FLOOR) * 0.5, rel=1e-6)


def test_the_decay_length_rounds_and_is_at_least_one_step():
    assert optim.phases(wsd(decay_fraction=0.25), 10).stable_end == 8  # round(2.5) = 2
    assert optim.phases(wsd(decay_fraction=0.01, warmup_steps=0), 10).stable_end == 9  # round(0.1) = 0 -> 1
    lr = lrs(wsd(decay_fraction=0.01, warmup_steps=0), 10)
    assert (lr[:9] == PEAK).all() and lr[9] == np.float32(FLOOR)
    lr = lrs(wsd(decay_fraction=1.0, warmup_steps=0), 10)  # all decay: as "linear" without a warmup, one step later
    np.testing.assert_allclose(lr, FLOOR + (PEAK - FLOOR) * (1 - np.arange(1, 11) / 10), rtol=1e-6)


def test_linear_and_constant_and_the_shared_warmup():
    base = dict(lr=PEAK, min_lr_ratio=FLOOR, warmup_steps=10)
    linear = lrs(OptimConfig(**base, schedule="linear"), 200)
    assert linear[10] == pytest.approx(PEAK) and linear[199] == pytest.approx(FLOOR)
    np.testing.assert_allclose(np.diff(linear[10:]), -(PEAK - FLOOR) / 189, rtol=1e-4)  # a straight line
    constant = lrs(OptimConfig(**base, schedule="constant"), 200)
    assert (constant[9:] == PEAK).all()
    # Every schedule warms up alike, bit for bit, while the cap (num_steps // 10) does not bind ...
    warmups = [lrs(OptimConfig(**base, schedule=kind), 200)[:10] for kind in optim.SCHEDULES]
    for w in warmups[1:]:
        np.testing.assert_array_equal(w, warmups[0])
    # ... and in a short run all but wsd cap it at 10% of the run; wsd's must not depend on num_steps
    for kind in ("cosine", "linear", "constant"):
        assert optim.warmup_steps(OptimConfig(**base, schedule=kind), 50) == 5
    assert optim.warmup_steps(OptimConfig(**base, schedule="wsd"), 50) == 10


def test_extension_is_allowed_exactly_where_the_steps_taken_keep_their_lr():
    """Under wsd, optim.extension_refusal is None <=> the lr of every step done is bit for bit the same under both
    lengths; every other schedule refuses any change of length."""
    for kind, shape in (("wsd", "linear"), ("wsd", "1-sqrt"), ("cosine", "linear"), ("linear", "linear")):
        cfg = OptimConfig(lr=3e-4, warmup_steps=3, schedule=kind, decay_fraction=0.3, decay_shape=shape)
        table = {n: lrs(cfg, n) for n in range(12, 41, 4)}
        allowed = 0
        for old, new in itertools.permutations(table, 2):
            for step in range(1, min(old, new) + 1):
                refusal = optim.extension_refusal(cfg, old, new, step)
                if kind == "wsd":
                    same = np.array_equal(table[old][:step], table[new][:step])
                    assert (refusal is None) == same, (kind, old, new, step, refusal)
                allowed += refusal is None
            assert optim.extension_refusal(cfg, old, old, old) is None  # the same length: always
        assert (allowed > 0) == (kind == "wsd")


def test_bad_schedule_settings_are_one_line_errors():
    for changes, message in (
        ({"schedule": "cosin"}, "optim.schedule='cosin' must be one of ('cosine', 'wsd', 'linear', 'constant')"),
        ({"decay_shape": "sqrt"}, "optim.decay_shape='sqrt' must be one of ('linear', '1-sqrt')"),
        ({"decay_fraction": 0.0}, "optim.decay_fraction=0.0 must be in (0, 1]"),
        ({"decay_fraction": 1.5}, "optim.decay_fraction=1.5 must be in (0, 1]"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            OptimConfig(**changes)
    # wsd never caps its warmup (so that the run can be extended): one that runs into the decay is refused at setup
    with pytest.raises(ConfigError, match=r"optim.warmup_steps=10 does not fit train.num_steps=12 .* by step 9;"):
        optim.check_schedule(wsd(decay_fraction=0.25), 12)
    optim.check_schedule(wsd(decay_fraction=0.25), 14)  # 10 steps of warmup, the decay from step 11
    optim.check_schedule(OptimConfig(warmup_steps=10), 12)  # the cosine caps its warmup: any length fits


# End to end: tiny runs of the real train entry (8 fake CPU devices). A wsd run of 10 steps, decay_fraction 0.25,
# decays over steps 9-10; one of 16 over steps 13-16. Both warm up over steps 1-2 and are stable from step 3.
WSD = {"optim.schedule": "wsd", "optim.decay_shape": "1-sqrt", "optim.decay_fraction": 0.25, "optim.warmup_steps": 2}


def wsd_config(num_steps: int, **overrides):
    """A tiny wsd run saving at its end (and at --stop_after) only: fewer saves, the same numbers."""
    return tiny_config(**{**WSD, "train.num_steps": num_steps, "checkpoint.every": 100, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The straight 16-step run, and a 10-step run to its end (the branch source)."""
    straight, source = (str(tmp_path_factory.mktemp(name)) for name in ("straight16", "source10"))
    train.run(wsd_config(16), straight)
    train.run(wsd_config(10, **{"checkpoint.every": 2, "checkpoint.keep": 9}), source)
    return straight, source


def test_a_wsd_run_extended_in_its_stable_phase_equals_the_longer_run(runs, tmp_path, capfd):
    straight, _ = runs
    workdir = str(tmp_path)
    train.run(wsd_config(10), workdir, stop_after=4)  # steps 1-4 of the 10-step plan: warmup and stable
    # a 4-step run decays at step 4, which this one took at the stable lr
    with pytest.raises(CheckpointError, match=r"train.num_steps: checkpoint 10 vs now 4 \(a 4-step run decays from"):
        train.run(wsd_config(4), workdir)
    train.run(wsd_config(16), workdir)  # extended to 16 steps: decays over 13-16
    out, err = capfd.readouterr()
    assert "train.num_steps 10 -> 16 at step 4, in the stable phase: the decay now spans steps 13-16" in err
    assert "lr: wsd | warmup: 2 steps | stable at 0.001: steps 3-12 | 1-sqrt decay: steps 13-16, to 0.0001" in out
    assert losses_in_order(workdir) == losses_in_order(straight)  # every train and eval loss, bit for bit
    assert [s for s in train_losses(workdir)] == list(range(1, 17))
    assert_trees_equal(final_params(workdir), final_params(straight))


def test_a_branch_from_the_stable_phase_equals_the_run_that_decays_there(runs, tmp_path):
    straight, source = runs
    workdir = str(tmp_path)
    train.run(wsd_config(16, **{"train.branch_from": f"{source}@6"}), workdir)
    reference = losses_in_order(straight)
    reference = reference[reference.index(("train", 6, train_losses(straight)[6])) + 1 :]
    # the evaluation of step 6 (the source's own was not copied: Evaluation.missed), steps 7-16, bit for bit
    assert losses_in_order(workdir) == reference and reference[0][:2] == ("eval", 6)
    assert_trees_equal(final_params(workdir), final_params(straight))
    # The branch records where it came from and resumes as any run, without repeating it
    train.run(wsd_config(16), workdir)  # finished: restores step 16, checks it, trains nothing
    assert [e for e in read_metrics(workdir) if e["event"] == "train"][-1]["step"] == 16


def test_a_length_change_is_refused_once_the_decay_has_begun(runs):
    """(Every other schedule refuses any change: tests/test_train.py's test_resume_refuses_other_settings.)"""
    _, source = runs  # its newest checkpoint is step 10, in the decay
    with pytest.raises(CheckpointError, match=r"step 10 is past the stable phase, the decay began at step 9;"):
        train.run(wsd_config(16), source)
    assert max(train_losses(source)) == 10  # the refused resume left the run alone


def test_a_branch_is_refused_from_the_decay_from_other_settings_and_from_no_step(runs, tmp_path):
    _, source = runs
    refused = [
        ({"train.branch_from": f"{source}@10"}, CheckpointError, "step 10 is past the stable phase"),
        ({"train.branch_from": f"{source}@6", "data.seed": 1}, CheckpointError, "(data.seed: checkpoint 0 vs now 1)"),
        (
            {"train.branch_from": f"{source}@5"},
            CheckpointError,
            "no checkpoint for step 5; available: [2, 4, 6, 8, 10]",
        ),
        ({"train.branch_from": source}, ConfigError, f"train.branch_from={source!r} must be PATH@STEP:"),
        ({"train.branch_from": f"{tmp_path}@2"}, CheckpointError, "has no checkpoints/"),
    ]
    for i, (overrides, error, message) in enumerate(refused):
        workdir = str(tmp_path / f"branch{i}")
        with pytest.raises(error, match=re.escape(message)) as raised:
            train.run(wsd_config(16, **overrides), workdir)
        assert "\n" not in str(raised.value)
        assert not os.path.exists(os.path.join(workdir, "config.json"))  # refused before anything is recorded


def test_the_plot_and_the_record_show_where_the_decay_starts(runs):
    straight, _ = runs
    (run,) = plots.read_runs([straight])
    assert run.decay_start == 13
    fig = plots.figure([run])
    ax_loss, ax_lr = fig.axes[:2]
    markers = [line for line in ax_lr.get_lines() if line.get_linestyle() == ":"]
    assert [(list(m.get_xdata()), m.get_label()) for m in markers] == [([13, 13], "decay starts (step 13)")]
    assert len([line for line in ax_loss.get_lines() if line.get_linestyle() == ":"]) == 1
    lr = dict(zip(*run.series("train", "lr")))
    assert lr[12] == np.float32(1e-3) and lr[13] < lr[12] and lr[16] == pytest.approx(1e-4)
    cosine = dataclasses.replace(run, decay_start=None)  # a cosine run has no marker
    assert not [line for line in plots.figure([cosine]).axes[1].get_lines() if line.get_linestyle() == ":"]


def test_a_one_epoch_run_compares_the_steps_it_resolved_to():
    """train.num_steps=None records one epoch's steps (the stream's num_steps): the same count given explicitly
    continues the run; another is refused, naming both counts."""
    stream = {"global_batch_size": 8, "num_windows": 100, "num_steps": 12, "train_files": ["a.pbin (10 bytes)"]}
    saved_config = json.loads(json.dumps(tiny_config(**{"train.num_steps": None}).to_dict()))
    resume.check_resumable(saved_config, stream, tiny_config(**{"train.num_steps": 12}), stream, "ckpt", 2)
    longer = {**stream, "num_steps": 20}
    message = "(train.num_steps: checkpoint 12 (one epoch) vs now 20 (optim.schedule='cosine' spans the whole run"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        resume.check_resumable(saved_config, stream, tiny_config(**{"train.num_steps": 20}), longer, "ckpt", 2)
