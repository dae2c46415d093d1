"""Shuffle and chunk speed and memory, jaxgpt vs Modalities 0.5.0, on bench/pack.py's ~50 MB JSONL and its .pbin.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/data_tools.py [--copies 20] [--big_gb 2] [--skip_modalities]

Four commands (shuffle_tokenized_data, shuffle_jsonl_data, create_shuffled_dataset_chunk, create_shuffled_jsonl_chunk
with chunk 1 of 4 of a one-file list), each run by both CLIs as subprocesses (interpreter and library start-up count,
as for a user), with the peak RSS of each process (wait4), and once more in process with the imports done before the
clock starts ("work"). The outputs must be byte-identical. Then the .pbin shuffle of a synthetic `big_gb` GB .pbin
(about 4 KB documents): time and peak RSS of both. Files live in .bench_cache/data_tools; the outputs and the big
.pbin are deleted as soon as compared, the 50 MB JSONL, its .idx and .pbin are kept (rebuilt when missing).
"""

import argparse
import filecmp
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
WORK = REPO / ".bench_cache" / "data_tools"
MOD_BIN = REPO / ".bench_cache" / "modalities-venv" / "bin"
JAXGPT = [sys.executable, "-m", "jaxgpt.cli"]

# The work alone, in each venv's own interpreter: imports first, then the clock. argv: command name, then its kwargs.
_WORK_SCRIPT = {
    "jaxgpt": """
import json, sys, time
from jaxgpt.data.prepare import chunks
from jaxgpt.data.prepare import shuffle
fn = {"shuffle_tokenized_data": shuffle.shuffle_pbin, "shuffle_jsonl_data": shuffle.shuffle_jsonl,
      "create_shuffled_dataset_chunk": chunks.create_pbin_chunk,
      "create_shuffled_jsonl_chunk": chunks.create_jsonl_chunk}
kw = json.loads(sys.argv[2])
t0 = time.perf_counter()
if "list" in kw:
    fn[sys.argv[1]](kw["list"], kw["root"], kw["out"], chunk_id=kw["chunk_id"], num_chunks=kw["num_chunks"],
                    global_seed=kw["seed"])
else:
    fn[sys.argv[1]](kw["src"], kw["out"], seed=kw["seed"])
print(time.perf_counter() - t0)
""",
    "modalities": """
import json, sys, time
from pathlib import Path
from modalities import api
kw = json.loads(sys.argv[2])
policy = api.FileExistencePolicy.ERROR
t0 = time.perf_counter()
if sys.argv[1] == "shuffle_tokenized_data":
    api.shuffle_tokenized_data(Path(kw["src"]), Path(kw["out"]), 100, policy, seed=kw["seed"])
elif sys.argv[1] == "shuffle_jsonl_data":
    api.shuffle_jsonl_data(Path(kw["src"]), Path(kw["out"]), policy, seed=kw["seed"])
else:
    suffix = ".pbin" if sys.argv[1] == "create_shuffled_dataset_chunk" else ".jsonl"
    files = [Path(kw["root"]) / Path(x.strip()).with_suffix(suffix) for x in open(kw["list"])]
    make = api.create_shuffled_dataset_chunk if suffix == ".pbin" else api.create_shuffled_jsonl_dataset_chunk
    make(files, Path(kw["out"]), kw["chunk_id"], kw["num_chunks"], policy, global_seed=kw["seed"])
print(time.perf_counter() - t0)
""",
}


# A child's ru_maxrss starts at its parent's RSS (Linux carries the forked memory's high-water mark across exec), so
# the commands are started by this tiny launcher (~10 MB) rather than by the benchmark (~100 MB with numpy and the
# tokenizers loaded): it forks, execs the command, and prints the command's own peak RSS (KiB) as its last line.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(cmd: list) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of one subprocess."""
    t0 = time.perf_counter()
    launch = [sys.executable, "-S", "-c", _LAUNCHER, *map(str, cmd)]
    proc = subprocess.run(launch, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    raise_for(proc, cmd, proc.stderr)
    out, peak_kib = proc.stdout.rstrip("\n").rsplit("\n", 1) if "\n" in proc.stdout.strip() else ("", proc.stdout)
    return seconds, int(peak_kib) / 1024, out


def raise_for(proc, cmd, err: str) -> None:
    if proc.returncode:
        raise SystemExit(f"command failed: {' '.join(map(str, cmd))}\n{err[-3000:]}")


def prepare_corpus(copies: int) -> tuple[pathlib.Path, pathlib.Path]:
    """bench/pack.py's JSONL (train split x copies, every copy distinct) and its .pbin, made by jaxgpt."""
    src, pbin = WORK / "bench.jsonl", WORK / "bench.pbin"
    if src.exists() and pbin.exists():
        return src, pbin
    spec = importlib.util.spec_from_file_location("bench_pack", REPO / "bench" / "pack.py")
    bench_pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_pack)
    bench_pack.build_jsonl(src, copies)
    from jaxgpt.data.prepare.index import create_index
    from jaxgpt.data.prepare.pack import pack_jsonl

    create_index(src, WORK / "bench.idx", "override")
    pack_jsonl(
        src,
        pbin,
        tokenizer_file=REPO / "data/tokenizer/tokenizer.json",
        jq_pattern=".raw_content",
        index_path=WORK / "bench.idx",
        file_existence_policy="override",
        progress=False,
    )
    return src, pbin


def commands(src: pathlib.Path, pbin: pathlib.Path) -> dict[str, tuple[list, dict]]:
    """name -> (CLI arguments after `data NAME` without the output flag, kwargs of the in-process run)."""
    (WORK / "list.txt").write_text("bench\n")
    chunk = [
        "--input_file_list_path",
        WORK / "list.txt",
        "--input_data_root_path",
        WORK,
        "--chunk_id",
        1,
        "--num_chunks",
        4,
        "--global_seed",
        42,
    ]
    chunk_kw = {"list": str(WORK / "list.txt"), "root": str(WORK), "chunk_id": 1, "num_chunks": 4, "seed": 42}
    return {
        "shuffle_tokenized_data": (
            ["--input_data_path", pbin, "--seed", 42, "--output_data_path"],
            {"src": str(pbin), "seed": 42},
        ),
        "shuffle_jsonl_data": (
            ["--input_data_path", src, "--seed", 42, "--output_data_path"],
            {"src": str(src), "seed": 42},
        ),
        "create_shuffled_dataset_chunk": ([*chunk, "--output_chunk_file_path"], chunk_kw),
        "create_shuffled_jsonl_chunk": ([*chunk, "--output_chunk_file_path"], chunk_kw),
    }


def bench_command(name: str, args: list, kw: dict, sides: list[str]) -> dict:
    """Times one command on each side (CLI, then in process); checks the outputs are identical."""
    ext = ".pbin" if name in ("shuffle_tokenized_data", "create_shuffled_dataset_chunk") else ".jsonl"
    result, outs = {}, []
    for side in sides:
        cli, py = (JAXGPT, sys.executable) if side == "jaxgpt" else ([MOD_BIN / "modalities"], MOD_BIN / "python")
        out = WORK / f"{side}_{name}{ext}"
        work_out = WORK / f"{side}_{name}_work{ext}"
        for f in (out, work_out):
            f.unlink(missing_ok=True)
        seconds, peak, _ = run([*cli, "data", name, *args, out])
        work_s = float(run([py, "-c", _WORK_SCRIPT[side], name, json.dumps({**kw, "out": str(work_out)})])[2])
        result[side] = {"cli_s": seconds, "peak_rss_mb": peak, "work_s": work_s}
        same = filecmp.cmp(out, work_out, shallow=False)
        outs.append(out)
        work_out.unlink()
        assert same, f"{side} {name}: CLI and in-process outputs differ"
    if len(outs) == 2:
        result["identical"] = filecmp.cmp(*outs, shallow=False)
    for f in outs:
        f.unlink()
    return result


def make_big_pbin(path: pathlib.Path, gigabytes: float) -> int:
    """A synthetic .pbin of `gigabytes` GB: random GPT-2 ids, documents of 200..3800 tokens; returns its size."""
    from jaxgpt.data.format.pbin import PbinWriter

    rng = np.random.default_rng(0)
    writer = PbinWriter(path, 2)
    left = int(gigabytes * 1e9) // 2
    while left > 0:
        counts = rng.integers(200, 3800, size=4096)
        counts = counts[np.cumsum(counts) <= left] if counts.sum() > left else counts
        if len(counts) == 0:
            break
        writer.write(rng.integers(0, 50257, size=int(counts.sum()), dtype=np.uint16).astype("<u2"), counts)
        left -= int(counts.sum())
    writer.close()
    return path.stat().st_size


def bench_big(gigabytes: float, sides: list[str]) -> dict:
    src = WORK / "big.pbin"
    size = make_big_pbin(src, gigabytes)
    result = {"file_mb": size / 1e6}
    outs = []
    for side in sides:
        cli = JAXGPT if side == "jaxgpt" else [MOD_BIN / "modalities"]
        out = WORK / f"{side}_big.pbin"
        out.unlink(missing_ok=True)
        seconds, peak, _ = run(
            [*cli, "data", "shuffle_tokenized_data", "--input_data_path", src, "--output_data_path", out, "--seed", 42]
        )
        result[side] = {"cli_s": seconds, "peak_rss_mb": peak, "rss_of_file": peak * 1e6 / size}
        outs.append(out)
    if len(outs) == 2:
        result["identical"] = filecmp.cmp(*outs, shallow=False)
    for f in [src, *outs]:
        f.unlink()
    return result


def report(name: str, r: dict) -> None:
    line = f"{name:30s}"
    for side in ("jaxgpt", "modalities"):
        if side in r:
            s = r[side]
            work = f", work {s['work_s']:6.2f} s" if "work_s" in s else ""
            line += f" | {side} {s['cli_s']:6.2f} s{work}, peak RSS {s['peak_rss_mb']:6.0f} MB"
    if "modalities" in r:
        m, j = r["modalities"], r["jaxgpt"]
        line += f" | speed-up {m['cli_s'] / j['cli_s']:.1f}x"
        line += f" (work {m['work_s'] / j['work_s']:.1f}x)" if "work_s" in j else ""
        line += f" | identical {r['identical']}"
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=20, help="train-split copies in the input (20: ~50 MB)")
    p.add_argument("--big_gb", type=float, default=2.0, help="size of the synthetic .pbin (0: skip)")
    p.add_argument("--skip_modalities", action="store_true")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    sides = ["jaxgpt"] + ([] if args.skip_modalities or not (MOD_BIN / "modalities").exists() else ["modalities"])
    src, pbin = prepare_corpus(args.copies)
    print(f"input: {src} ({src.stat().st_size / 1e6:.1f} MB), {pbin} ({pbin.stat().st_size / 1e6:.1f} MB); {sides}")
    results = {}
    for name, (cli_args, kw) in commands(src, pbin).items():
        results[name] = bench_command(name, cli_args, kw, sides)
        report(name, results[name])
    if args.big_gb:
        results["big"] = bench_big(args.big_gb, sides)
        big = results["big"]
        report(f"shuffle {big['file_mb'] / 1e3:.2f} GB .pbin", big)
        for side in sides:
            print(f"  {side}: peak RSS {100 * big[side]['rss_of_file']:.1f}% of the file size")
    if any(r.get("identical") is False for r in results.values()):
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
