"""Instruction-tuning data: Modalities' prepare_instruction_tuning_data byte for byte, its bad inputs, the loss mask.

The goldens in tests/data/sft/expected were written by Modalities 0.5.0 itself (tests/data/make_golden.md).
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TEST_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgpt.data.prepare.instruction import prepare_instruction_data
from jaxgpt.data.sft import loss_mask
from jaxgpt.errors import JaxgptError

SFT = TEST_DATA / "sft"
EXPECTED = SFT / "expected"
BEGIN, END = 61, 3  # "^" and "$" in GPT-2


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """The layout the goldens' YAML paths are relative to: sft/ (inputs) and tokenizer/, as the working directory."""
    shutil.copytree(SFT, tmp_path / "sft", ignore=shutil.ignore_patterns("expected", "*.py"))
    shutil.copytree(REPO / "data" / "tokenizer", tmp_path / "tokenizer")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("config", ["apply_chat_template", "apply_chat_template_b"])
def test_outputs_equal_modalities_byte_for_byte(stage, config, capsys):
    report = prepare_instruction_data(f"sft/{config}.yaml", progress=False)
    folder = stage / report.folder
    expected = EXPECTED / folder.name
    assert expected.is_dir(), f"no golden for {folder.name}: the config's hash changed"
    assert _files(folder) == _files(expected)
    assert sorted(os.listdir(stage / "out")) == [folder.name]  # no temporary folder left behind
    # two conversations are cut before their first reply: named, not silently kept
    assert report.no_target == {**{s: [] for s in report.no_target}, "train": [37, 38]}
    assert "2 conversation(s) of split train have no target in the loss" in capsys.readouterr().err


def test_a_second_run_replaces_the_folder_whole(stage):
    first = prepare_instruction_data("sft/apply_chat_template.yaml", progress=False)
    (stage / first.folder / "stray.txt").write_text("from an older run")
    again = prepare_instruction_data("sft/apply_chat_template.yaml", progress=False)
    assert _files(stage / again.folder) == _files(EXPECTED / os.path.basename(again.folder))


def test_the_command_line(stage):
    cmd = [sys.executable, "-m", "jaxgpt.cli", "data", "prepare_instruction_tuning_data"]
    proc = subprocess.run(
        [*cmd, "--config_file_path", "sft/apply_chat_template_b.yaml"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "conversations train 37, test 5" in proc.stdout + proc.stderr


def _edit(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


BAD_CHAT = {
    "not JSON": (4, "{not json", r"sft/chat\.jsonl:4: invalid JSON"),
    "no messages": (2, '{"id": 1, "turns": []}', r"sft/chat\.jsonl:2: no key 'messages'"),
    "no role": (3, '{"messages": [{"content": "x"}]}', r"chat\.jsonl:3: messages\[0\] has no role"),
    "no content": (3, '{"messages": [{"role": "gpt"}]}', r"chat\.jsonl:3: messages\[0\] has no content"),
    "unmapped role": (
        5,
        '{"messages": [{"role": "human", "content": "a"}, {"role": "bot", "content": "b"}]}',
        r"chat\.jsonl:5: messages\[1\]\.role 'bot' is not in .*apply_chat_template\.yaml:14: instruction_data_",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHAT))
def test_bad_conversations_are_one_line_naming_file_and_line(stage, case):
    line_no, text, message = BAD_CHAT[case]
    lines = (stage / "sft" / "chat.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line_no - 1] = text + "\n"
    (stage / "sft" / "chat.jsonl").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(JaxgptError, match=message):
        prepare_instruction_data("sft/apply_chat_template.yaml", progress=False)
    assert not (stage / "out").exists() or os.listdir(stage / "out") == []


BAD_CONFIG = {
    "template syntax": (
        "{% for turn in messages %}",
        "{% for turn in messages %",
        r"apply_chat_template\.yaml:2[34]: jinja2_chat_template: template syntax error",
    ),
    "sandbox escape": (
        "{{ chat_template_data.system_instruction + '\\n' }}",
        "{{ ''.__class__.__mro__ }}",
        r"chat\.jsonl:1: .*jinja2_chat_template failed: SecurityError: access to attribute '__class__'",
    ),
    "negative split": (
        "val: 15\n      test: 15",
        "val: -15\n      test: 45",
        r"splitting\.val must be an integer >= 0",
    ),
    "split not 100": ("train: 70", "train: 0", r"splitting: the percentages .* must add up to 100"),
    "marker not one token": ("b_include_to_loss_token: ^", "b_include_to_loss_token: '^^^'", r"is not a single token"),
    "markers equal": (
        "e_include_to_loss_token: $",
        "e_include_to_loss_token: ^",
        r"the two loss markers are one token",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_bad_configs_are_one_line_naming_the_key(stage, case):
    old, new, message = BAD_CONFIG[case]
    _edit(stage / "sft" / "apply_chat_template.yaml", old, new)
    with pytest.raises(JaxgptError, match=message):
        prepare_instruction_data("sft/apply_chat_template.yaml", progress=False)
    assert not (stage / "out").exists() or os.listdir(stage / "out") == []


def test_the_template_error_names_the_file_line(stage):
    path = stage / "sft" / "apply_chat_template.yaml"
    _edit(path, "{% endif %}\n    {% endfor %}", "{% endif %}\n    {% endfro %}")
    bad = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if "endfro" in line)
    with pytest.raises(
        JaxgptError, match=rf"apply_chat_template\.yaml:{bad}: jinja2_chat_template: template syntax error"
    ):
        prepare_instruction_data("sft/apply_chat_template.yaml", progress=False)


def test_modalities_own_resolvers_are_refused_by_name(stage):
    _edit(stage / "sft" / "pbin_config.yaml", "num_cpus: 1", "num_cpus: ${node_env:num_cpus}")
    with pytest.raises(JaxgptError, match=r"pbin_config\.yaml:\d+: settings\.num_cpus: interpolation resolver 'node"):
        prepare_instruction_data("sft/apply_chat_template.yaml", progress=False)


# --- the loss mask ---------------------------------------------------------------------------------------------------


def _naive_mask(row, begin, end):
    """The rule of jaxgpt.data.sft, one target at a time."""
    markers = [(i, t) for i, t in enumerate(row) if t in (begin, end)]
    out = []
    for s, t in enumerate(row):
        before = [m for m in markers if m[0] < s]
        if t in (begin, end):
            out.append(False)
        elif before:
            out.append(before[-1][1] == begin)
        else:
            out.append(bool(markers) and markers[0][1] == end)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from([BEGIN, END, 7, 8, 9]), min_size=8, max_size=8), min_size=1, max_size=4))
def test_loss_mask_follows_its_rule_row_by_row(rows):
    targets = np.array(rows, dtype=np.int32)
    got = loss_mask(targets, BEGIN, END)
    assert got.dtype == bool and got.shape == targets.shape
    assert got.tolist() == [_naive_mask(r, BEGIN, END) for r in rows]
    for r in range(len(rows)):  # a row's mask depends on that row alone
        np.testing.assert_array_equal(loss_mask(targets[r : r + 1], BEGIN, END)[0], got[r])


def test_loss_mask_is_the_same_in_jax():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    targets = rng.choice(np.array([BEGIN, END, 5, 6, 7, 8]), size=(16, 40)).astype(np.int32)
    np.testing.assert_array_equal(
        np.asarray(loss_mask(jnp.asarray(targets), BEGIN, END)), loss_mask(targets, BEGIN, END)
    )


def test_loss_mask_equals_modalities_collator_where_it_is_defined():
    """Modalities' LossMaskingCollateFnWrapper, one row per batch, on the packed golden windows and on edge rows."""
    golden = np.load(EXPECTED / "windows_and_masks.npz")
    checked = 0
    for split in ("train", "test"):
        windows, masked, status = (
            golden[f"windows_{split}"],
            golden[f"masked_targets_{split}"],
            golden[f"status_{split}"],
        )
        targets = windows[:, 1:]
        ours = loss_mask(targets, BEGIN, END)
        for r in np.flatnonzero(status == 0):
            np.testing.assert_array_equal(ours[r], masked[r] != -100, err_msg=f"{split} window {r}")
            checked += 1
    edge_t, edge_m, edge_s = golden["edge_targets"], golden["edge_masked"], golden["edge_status"]
    for r in np.flatnonzero(edge_s == 0):
        np.testing.assert_array_equal(loss_mask(edge_t[r : r + 1], BEGIN, END)[0], edge_m[r] != -100)
        checked += 1
    assert checked == 22 + 7  # windows and edge rows Modalities masks (tests/data/make_golden.md)


def test_loss_mask_defines_what_modalities_refuses():
    row = np.array([[7, 8, END, 7, BEGIN, 9, 9, END, 7]])  # starts inside a reply: its head counts
    assert loss_mask(row, BEGIN, END).tolist() == [[True, True, False, False, False, True, True, False, False]]
    row = np.array([[7, BEGIN, 9, 9]])  # ends inside a reply: its tail counts
    assert loss_mask(row, BEGIN, END).tolist() == [[False, False, True, True]]
    assert not loss_mask(np.array([[7, 8, 9]]), BEGIN, END).any()  # no marker: nothing
    with pytest.raises(ValueError, match="must differ"):
        loss_mask(row, BEGIN, BEGIN)
