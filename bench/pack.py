"""Index + pack speed, jaxgpt vs Modalities 0.5.0, on the same ~50 MB JSONL, same machine, one run; checks the bytes.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/pack.py [--copies 20] [--num_processes N] [--skip_modalities]

The input is the RedPajama train split repeated `copies` times; every copy's documents are made distinct (a copy tag
and a per-copy shuffle of each document's lines), so no cache of identical documents helps either side. Both sides run
as CLI subprocesses, so interpreter and library start-up count, as they do for a user. Modalities runs from
.bench_cache/modalities-venv (created here if missing: torch==2.13.0 modalities==0.5.0 'transformers<5', CPU wheels).
"""

import argparse
import json
import os
import pathlib
import random
import resource
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
WORK = REPO / ".bench_cache" / "pack"
MOD_VENV = REPO / ".bench_cache" / "modalities-venv"
TOKENIZER_DIR = REPO / "data" / "tokenizer"


def build_jsonl(path: pathlib.Path, copies: int) -> int:
    """Writes `copies` distinct variants of the train split; returns the byte size."""
    lines = (REPO / "data/raw/redpajama_v2_samples_512_train.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(x) for x in lines]
    with open(path, "w", encoding="utf-8") as f:
        for k in range(copies):
            for i, doc in enumerate(docs):
                parts = doc["raw_content"].split("\n")
                random.Random(k * 100_003 + i).shuffle(parts)
                f.write(json.dumps({**doc, "raw_content": f"[copy {k}] " + "\n".join(parts)}) + "\n")
    return path.stat().st_size


def ensure_modalities() -> pathlib.Path | None:
    exe = MOD_VENV / "bin" / "modalities"
    if exe.exists():
        return exe
    print(f"creating {MOD_VENV} (CPU torch, modalities 0.5.0) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(MOD_VENV)], check=True)
        pip = [str(MOD_VENV / "bin" / "pip"), "install", "-q", "--index-url", "https://download.pytorch.org/whl/cpu"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run(
            [str(MOD_VENV / "bin" / "pip"), "install", "-q", "modalities==0.5.0", "transformers<5"], check=True
        )
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"skipping Modalities: could not create its venv ({e})")
        return None
    return exe


def timed(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"command failed: {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=20, help="train-split copies in the input (20: ~50 MB)")
    p.add_argument("--num_processes", type=int, default=os.cpu_count(), help="processes for both packers")
    p.add_argument("--skip_modalities", action="store_true")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "bench.jsonl"
    size = build_jsonl(src, args.copies)
    for f in WORK.glob("*.[ip][db][xi]*"):
        f.unlink()
    py = sys.executable
    tok = TOKENIZER_DIR / "tokenizer.json"
    print(f"input: {src} ({size / 1e6:.1f} MB, {512 * args.copies} documents), {args.num_processes} processes")

    t_idx = timed([py, REPO / "tools/create_memmap_index.py", "--index_path", WORK / "j.idx", src])
    t_pack = timed(
        [
            py,
            REPO / "tools/create_packed_data.py",
            "--jq_pattern",
            ".raw_content",
            "--tokenizer_file",
            tok,
            "--index_path",
            WORK / "j.idx",
            "--dst_path",
            WORK / "j.pbin",
            "--num_processes",
            args.num_processes,
            "--no_progress",
            src,
        ]
    )
    from jaxgpt.data.format.pbin import read_pbin

    n_tok = read_pbin(WORK / "j.pbin").num_tokens
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest single process so far
    print(f"jaxgpt peak RSS of any one process (index or pack, main or worker): {peak_mb:.0f} MB")
    print(
        f"jaxgpt     index {t_idx:6.2f} s ({size / t_idx / 1e6:6.1f} MB/s)"
        f"   pack {t_pack:6.2f} s ({n_tok / t_pack / 1e6:5.2f}M tokens/s)"
    )

    exe = None if args.skip_modalities else ensure_modalities()
    if exe is None:
        print("Modalities not run")
        return
    yaml = WORK / "pack.yaml"
    yaml.write_text(
        f"settings:\n  src_path: {src}\n  dst_path: {WORK / 'm.pbin'}\n  index_path: {WORK / 'm.idx'}\n"
        f"  jq_pattern: .raw_content\n  num_cpus: {args.num_processes}\n  eod_token: <|endoftext|>\n"
        "  processing_batch_size: 1000\n  raw_samples_queue_size: 300\n  processed_samples_queue_size: 300\n"
        f"tokenizer:\n  component_key: tokenizer\n  variant_key: pretrained_hf_tokenizer\n  config:\n"
        f"    pretrained_model_name_or_path: {TOKENIZER_DIR}\n    padding: false\n    truncation: false\n"
    )
    m_idx = timed([exe, "data", "create_raw_index", "--index_path", WORK / "m.idx", src])
    m_pack = timed([exe, "data", "pack_encoded_data", yaml])
    print(
        f"Modalities index {m_idx:6.2f} s ({size / m_idx / 1e6:6.1f} MB/s)"
        f"   pack {m_pack:6.2f} s ({n_tok / m_pack / 1e6:5.2f}M tokens/s)"
    )
    same_idx = (WORK / "j.idx").read_bytes() == (WORK / "m.idx").read_bytes()
    same_pbin = (WORK / "j.pbin").read_bytes() == (WORK / "m.pbin").read_bytes()
    print(f"identical bytes: idx {same_idx}, pbin {same_pbin}")
    print(f"speed-up: index {m_idx / t_idx:.1f}x, pack {m_pack / t_pack:.1f}x (end to end, tokens/s)")
    if not (same_idx and same_pbin):
        raise SystemExit("outputs differ")
    shutil.rmtree(WORK / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
