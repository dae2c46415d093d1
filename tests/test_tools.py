"""The CLI tools end to end through subprocess: byte-identical outputs, clean errors, and no jax import."""

import os
import subprocess
import sys

from conftest import REPO, TEST_DATA, TOKENIZER

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(*args, check=True):
    proc = subprocess.run([PY, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_index_pack_merge_inspect_end_to_end(tmp_path):
    src = TEST_DATA / "lorem_ipsum_long.jsonl"
    _run("tools/create_memmap_index.py", "--index_path", tmp_path / "l.idx", src)
    assert (tmp_path / "l.idx").read_bytes() == (TEST_DATA / "lorem_ipsum_long.idx").read_bytes()
    pack = ["tools/create_packed_data.py", "--jq_pattern", ".text", "--tokenizer_file", TOKENIZER]
    pack += ["--index_path", tmp_path / "l.idx", "--dst_path", tmp_path / "l.pbin", "--num_processes", "2", src]
    out = _run(*pack).stdout
    assert "500 documents" in out
    assert (tmp_path / "l.pbin").read_bytes() == (TEST_DATA / "lorem_ipsum_long.pbin").read_bytes()
    again = _run(*pack, check=False)  # the default policy refuses to overwrite, with a one-line error
    assert again.returncode == 1 and "l.pbin: file exists" in again.stderr and "Traceback" not in again.stderr
    _run("tools/merge_packed_data.py", tmp_path / "m.pbin", tmp_path / "l.pbin", TEST_DATA / "lorem_ipsum.pbin")
    shown = _run("tools/inspect_pbin.py", tmp_path / "m.pbin", "--tokenizer_file", TOKENIZER, "--doc", "-1").stdout
    assert "num_docs: 512" in shown and "verdict: valid" in shown and "current (index offsets start at 0)" in shown
    assert shown.rstrip().endswith("<|endoftext|>")


def test_bad_line_cli_error_and_skip(tmp_path):
    src = tmp_path / "b.jsonl"
    src.write_bytes(b'{"text": "one"}\n{"text": null}\n{"text": "three"}\n')
    _run("tools/create_memmap_index.py", src)
    pack = ["tools/create_packed_data.py", "--jq_pattern", ".text", "--tokenizer_file", TOKENIZER, src]
    failed = _run(*pack, check=False)
    assert failed.returncode == 1 and f"{src}:2: jq pattern '.text' yields null" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "b.pbin").exists()
    skipped = _run(*pack, "--skip_faulty_lines")
    assert "2 documents" in skipped.stdout and f"skipped 1 faulty line(s):\n  {src}:2:" in skipped.stderr
    corrupt = tmp_path / "c.pbin"
    corrupt.write_bytes((tmp_path / "b.pbin").read_bytes()[:-5])
    shown = _run("tools/inspect_pbin.py", corrupt, check=False)
    assert shown.returncode == 1 and "INVALID" in shown.stdout


def test_output_under_a_file_is_a_clean_error(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_bytes(b'{"text": "one"}\n')
    failed = _run("tools/create_memmap_index.py", "--index_path", src / "x.idx", src, check=False)
    assert failed.returncode == 1 and f"{src / 'x.idx'}: cannot write there, {src} is not a directory" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_tools_do_not_import_jax(tmp_path):
    src = TEST_DATA / "lorem_ipsum.jsonl"
    idx, pbin, merged = tmp_path / "x.idx", tmp_path / "x.pbin", tmp_path / "m.pbin"
    runs = {  # every tool, each in the same process, in an order where each one's input exists
        "create_memmap_index": ["--index_path", idx, src],
        "create_packed_data": ["--jq_pattern", ".text", "--tokenizer_file", TOKENIZER, "--num_processes", "1"]
        + ["--index_path", idx, "--dst_path", pbin, src],
        "merge_packed_data": [merged, pbin],
        "inspect_pbin": [merged, "--tokenizer_file", TOKENIZER],
    }
    code = "import runpy, sys\n"
    for tool, args in runs.items():
        code += (
            f"sys.argv = ['x', *{list(map(str, args))!r}]\n"
            f"runpy.run_path('tools/{tool}.py', run_name='__main__')\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'grain', 'torch'))\n"
            f"print({tool!r}, 'HEAVY', heavy)\n"
        )
    out = _run("-c", code).stdout
    assert [line for line in out.splitlines() if "HEAVY" in line] == [f"{tool} HEAVY []" for tool in runs]


def test_inspect_with_a_tokenizer_lacking_the_ids(tmp_path):
    # A 260-id byte-level tokenizer against GPT-2 ids: one clear error naming the .pbin, the tokenizer and the id,
    # not tiktoken's KeyError traceback nor HF's silent empty text.
    import json

    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    vocab = {tok: i for tok, i in spec["model"]["vocab"].items() if len(tok) == 1}
    spec["model"].update(vocab={**vocab, "ZJ": 256, "QZ": 257, "QZJ": 258}, merges=["Z J", "Q Z", "QZ J"])
    spec["added_tokens"] = [dict(spec["added_tokens"][0], id=259)]
    small = tmp_path / "small_tokenizer.json"
    small.write_text(json.dumps(spec), encoding="utf-8")
    pbin = TEST_DATA / "lorem_ipsum.pbin"  # document 0 starts [15, 15639, ...]
    shown = _run("tools/inspect_pbin.py", pbin, "--tokenizer_file", small, check=False)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr, shown.stderr
    assert f"error: {pbin}: document 0 holds token id 15639, which {small} does not have" in shown.stderr
    assert "(its ids end at 259)" in shown.stderr
