"""Which targets each fine-tuning run's loss counted, from its metrics.jsonl, recomputed from its training windows.

    python tutorials/instruction_tuning/check_masks.py --masked=DIR --unmasked=DIR [--results=results.jsonl]

A run with data.loss_mask_tokens logs `tokens_counted`, the targets its step's loss averaged over. For every step of
the masked run this rebuilds the step's batch as training drew it (the same windows of the same .pbin, in the order
jaxgpt.data.loader.pipeline gives step k) and counts the targets that jaxgpt.data.sft.loss_mask keeps: the assistant
replies' tokens between ^ and $. The logged count must equal it, step by step. The unmasked run must log no count:
its loss averages every target, the user's words and the padding included. Exits 1 when either does not hold.
"""

import argparse
import json
import os
import sys

from jaxgpt import rundir
from jaxgpt.data.loader.pipeline import batch_windows
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.data.sft import loss_mask
from jaxgpt.data.tokenize import load_tokenizer


def train_events(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [e for e in map(json.loads, f) if e.get("event") == "train"]


def assistant_targets(workdir: str, steps: list[int]) -> tuple[dict[int, int], int]:
    """({step: the targets of its batch inside an assistant reply}, targets per batch) of the run in `workdir`."""
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        record = json.load(f)
    data, batch = record["config"]["data"], record["derived"]["global_batch"]
    tokenizer = load_tokenizer(rundir.tokenizer_path(workdir))
    begin, end = (tokenizer.token_id(t) for t in data["loss_mask_tokens"])
    source = PackedWindowSource(data["train_path"], data["seq_len"], reuse_last_target=data["reuse_last_target"])
    counts = {}
    for step in steps:  # metrics.jsonl's step k is the update made from batch k - 1
        windows_BxW = source.read_windows(batch_windows(len(source), batch, data["seed"], step - 1, (0, batch)))
        counts[step] = int(loss_mask(windows_BxW[:, 1:], begin, end).sum())
    return counts, batch * data["seq_len"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--masked", required=True, help="the run fine-tuned with data.loss_mask_tokens")
    parser.add_argument("--unmasked", required=True, help="the same fine-tuning without them")
    parser.add_argument("--results", default=None, help="append the figures to this JSONL file")
    args = parser.parse_args()

    masked = train_events(args.masked)
    logged = {e["step"]: e.get("tokens_counted") for e in masked}
    expected, per_batch = assistant_targets(args.masked, sorted(logged))
    wrong = {s: (logged[s], expected[s]) for s in logged if logged[s] != expected[s]}
    counted, targets = sum(expected.values()), per_batch * len(expected)
    print(
        f"masked run: tokens_counted at {len(logged) - len(wrong)}/{len(logged)} logged steps equal to the assistant"
        f" targets of the step's batch (jaxgpt.data.sft.loss_mask): {counted:,} of {targets:,} targets"
        f" ({100 * counted / targets:.1f}%) counted"
    )
    unmasked = train_events(args.unmasked)
    with_count = [e["step"] for e in unmasked if "tokens_counted" in e]
    print(
        f"unmasked run: tokens_counted in {len(with_count)}/{len(unmasked)} logged steps: its loss averages all"
        f" {per_batch:,} targets of every batch"
    )
    if args.results:
        figures = {"label": "masks", "steps": len(logged), "steps_equal": len(logged) - len(wrong)}
        figures |= {"counted": counted, "targets": targets, "unmasked_steps": len(unmasked)}
        figures |= {"unmasked_with_count": len(with_count)}
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(figures) + "\n")
    if wrong or with_count or not logged:
        sys.exit(f"error: (logged, recomputed) {dict(list(wrong.items())[:5])}; unmasked counts {with_count[:5]}")


if __name__ == "__main__":
    main()
