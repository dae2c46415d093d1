"""The one `jaxgpt` command: every entry point answers --help, bad input is one line, and a bug keeps its traceback."""

import subprocess
import sys

import pytest
from conftest import RAW, REPO, TEST_DATA, TOKENIZER, tiny_cli

JAXGPT = [sys.executable, "-c", "import sys; from jaxgpt.cli import main; sys.argv[0] = 'jaxgpt'; main()"]


def _run(cmd, timeout=300):
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=REPO, timeout=timeout)


HELP = {  # command -> what its --help must name
    "": ["train", "generate", "export", "plot", "data", "create_memmap_index", "inspect_pbin"],
    "generate": ["--workdir", "--prompt", "--max_new_tokens", "--mesh"],
    "export hf": ["--workdir", "--out", "--dtype"],
    "export modalities": ["--workdir", "--out", "--prompt"],
    "plot": ["DIR", "--out"],
    "create_memmap_index": ["src_path", "--index_path", "--file_existence_policy"],
    "create_packed_data": ["--jq_pattern", "--tokenizer_file", "--dst_path", "--num_processes"],
    "inspect_pbin": ["--tokenizer_file", "--doc"],
    "data": ["pack_encoded_data", "create_shuffled_dataset_chunk"],
    "data shuffle_tokenized_data": ["--input_data_path", "--seed"],
}


@pytest.mark.parametrize("command", sorted(HELP), ids=lambda c: c or "jaxgpt")
def test_every_command_answers_help(command, capsys):
    from jaxgpt import cli

    with pytest.raises(SystemExit) as e:
        cli.run([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: jaxgpt {command}".strip()), out
    assert all(flag in out for flag in HELP[command]), out


@pytest.mark.parametrize(
    "cmd, flags",
    [
        ([*JAXGPT, "train", "--help"], ["--config", "--workdir", "--stop_after", "--coordinator_address"]),
        ([sys.executable, "-m", "jaxgpt.train", "--help"], ["--config", "--workdir", "--stop_after"]),
        ([sys.executable, "-m", "jaxgpt.generate", "--help"], ["python -m jaxgpt.generate", "--prompt"]),
        ([sys.executable, "tools/export_hf.py", "--help"], ["tools/export_hf.py", "--workdir", "--dtype"]),
        ([sys.executable, "tools/merge_packed_data.py", "--help"], ["dst_path", "src_paths"]),
    ],
    ids=["jaxgpt train", "python -m jaxgpt.train", "python -m jaxgpt.generate", "tools/export_hf.py", "tools/merge"],
)
def test_every_entry_point_answers_help(cmd, flags):
    proc = _run(cmd)
    absl = "train" in cmd or "jaxgpt.train" in cmd  # absl's --help exits with status 1, argparse's with 0
    assert proc.returncode == (1 if absl else 0) and not proc.stderr, proc.stderr
    assert all(flag in proc.stdout for flag in flags), proc.stdout


def test_the_tutorials_two_commands_with_jaxgpt_make_the_golden_files(tmp_path):
    """Modalities' getting-started tutorial indexes and packs with two commands; `jaxgpt` takes their flags."""
    src, idx, pbin = RAW / "redpajama_v2_samples_512_test.jsonl", tmp_path / "t.idx", tmp_path / "t.pbin"
    assert _run([*JAXGPT, "create_memmap_index", "--index_path", idx, src]).returncode == 0
    pack = ["create_packed_data", "--jq_pattern", ".raw_content", "--tokenizer_file", TOKENIZER, "--index_path", idx]
    proc = _run([*JAXGPT, *pack, "--dst_path", pbin, src])
    assert proc.returncode == 0 and f"wrote {pbin}" in proc.stdout, proc.stderr
    assert pbin.read_bytes() == (TEST_DATA / "redpajama_v2_samples_512_test.pbin").read_bytes()
    again = _run([*JAXGPT, *pack, "--dst_path", pbin, src])  # bad input: one line, status 1
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {pbin}: file exists"), lines


# An internal function raising a plain ValueError, as JAX does for a shape error: a bug, never a one-line message.
_BUG = """
import sys
sys.path.insert(0, "tests")
import conftest  # 8 fake CPU devices
import {module} as target

def bug(*args, **kwargs):
    raise ValueError("an internal bug")

target.{function} = bug
from jaxgpt.cli import main
sys.argv[0] = "jaxgpt"
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "module, function, argv",
    [
        ("jaxgpt.train.setup", "make_plan", ["train", *tiny_cli("WORKDIR")[3:]]),
        ("jaxgpt.data.prepare.index", "index_jsonl", ["create_memmap_index", TEST_DATA / "lorem_ipsum.jsonl"]),
        ("jaxgpt.data.format.pbin", "inspect", ["inspect_pbin", TEST_DATA / "lorem_ipsum.pbin"]),
        ("jaxgpt.plots", "read_runs", ["plot", TEST_DATA / "checkpoint_v0_1" / "run"]),
    ],
    ids=["train", "create_memmap_index", "inspect_pbin", "plot"],
)
def test_an_internal_value_error_keeps_its_traceback(module, function, argv, tmp_path):
    argv = [str(a).replace("WORKDIR", str(tmp_path / "run")) for a in argv]
    if argv[0] == "create_memmap_index":
        argv += ["--index_path", str(tmp_path / "x.idx")]
    proc = _run([sys.executable, "-c", _BUG.format(module=module, function=function), *argv])
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "ValueError: an internal bug" in proc.stderr
    assert "error: an internal bug" not in proc.stderr
    assert not (tmp_path / "x.idx").exists()
