"""Writes data/evals/redpajama_cloze.jsonl: the bundled tiny downstream task (50 cloze requests, LAMBADA's form).

    python tools/make_sample_tasks.py            (from the repository root; the output is committed)

Request i comes from document i of the bundled validation split (data/raw/redpajama_v2_samples_512_test.jsonl): its
first words, split on single spaces as LAMBADA is, up to the last purely alphabetic word among the first 49, which is
the target (" " + word, scored verbatim after the context). It measures whether a run learns to predict a next word
from real text, in seconds; it is no benchmark. The getting-started run scores it at each evaluation.
"""

import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
SRC = REPO / "data" / "raw" / "redpajama_v2_samples_512_test.jsonl"
OUT = REPO / "data" / "evals" / "redpajama_cloze.jsonl"
REQUESTS, MAX_WORDS = 50, 49


def request(text: str) -> dict | None:
    words = text.split(" ")[:MAX_WORDS]
    for k in range(len(words) - 1, 8, -1):  # at least 9 words of context
        if words[k].isalpha():
            return {"context": " ".join(words[:k]), "target": " " + words[k]}
    return None


def main() -> None:
    rows = []
    with open(SRC, encoding="utf-8") as f:
        for line in f:
            row = request(json.loads(line)["raw_content"])
            if row is not None:
                rows.append(row)
            if len(rows) == REQUESTS:
                break
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} requests to {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
