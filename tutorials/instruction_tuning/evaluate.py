"""Exact-match accuracy of runs' greedy chat replies on held-out conversations: what `generate --chat` answers.

    python tutorials/instruction_tuning/evaluate.py --held_out=held_out.jsonl [--chat_template_file=F.yaml]
        [--results=results.jsonl] LABEL=DIR [LABEL=DIR ...]

Each held-out conversation (make_data.py's held_out.jsonl) ends with the expected assistant reply. A run is given the
conversation before it, and its reply, generated as `python -m jaxgpt.generate --workdir=DIR --chat` generates it
(jaxgpt.chat with the run's recipe, tokenizer encoding and stop tokens, greedy), must equal it exactly. One process
loads each model and compiles once. Prints, per run,

    LABEL: accuracy X/N = P% (chance C%)

where chance is the mean of the conversations' "chance" (a word of the list picked at random). A run trained without
data.chat_template_file (the pretrained warm start) is given --chat_template_file, the YAML the fine-tuning data was
prepared with. --results appends one JSON line per run: the figures and every reply.
"""

import argparse
import json
import os
import sys

from jaxgpt import chat, checkpoint, rundir
from jaxgpt.data.tokenize import load_tokenizer

MAX_NEW_TOKENS = 8  # an answer is one word and a stop token; a run that rambles is cut here (and wrong)


def read_held_out(path: str) -> tuple[list[list[dict]], list[str], list[float]]:
    """(each conversation up to its last reply, the expected replies, each conversation's chance)."""
    conversations, expected, chances = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            row = json.loads(line)
            *before, last = row["messages"]
            if last["role"] != "assistant":
                sys.exit(f"error: {path}:{lineno}: the last message is {last['role']!r}'s, not the assistant's reply")
            conversations.append(before)
            expected.append(last["content"])
            chances.append(float(row["chance"]))
    return conversations, expected, chances


def replies(workdir: str, chat_template_file: str | None, conversations: list[list[dict]]) -> list[str]:
    """The run's greedy reply to each conversation, as `generate --chat` gives it."""
    model, config = checkpoint.load(workdir)
    recorded = os.path.isfile(rundir.path(workdir, rundir.CHAT_TEMPLATE))
    given = None if recorded else chat_template_file
    recipe = chat.find_recipe(workdir, given, tuple(config.data.get("loss_mask_tokens", ())))
    tokenizer = load_tokenizer(rundir.find_tokenizer(workdir, None, config), encoding=recipe.encoding)
    return chat.chat(model, tokenizer, recipe, conversations, max_new_tokens=MAX_NEW_TOKENS, batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR", help="the runs to evaluate (their newest checkpoint)")
    parser.add_argument("--held_out", required=True, help="make_data.py's held_out.jsonl")
    parser.add_argument("--chat_template_file", default=None, help="for a run without DIR/chat_template.yaml")
    parser.add_argument("--results", default=None, help="append each run's figures and replies to this JSONL file")
    parser.add_argument("--show", type=int, default=3, help="print this many replies next to their answers")
    args = parser.parse_args()

    conversations, expected, chances = read_held_out(args.held_out)
    chance = sum(chances) / len(chances)
    for run in args.runs:
        label, _, workdir = run.rpartition("=")
        got = replies(workdir, args.chat_template_file, conversations)
        correct = sum(r == e for r, e in zip(got, expected))
        for conversation, reply, answer in list(zip(conversations, got, expected))[: args.show]:
            print(f"  {conversation[-1]['content']!r} -> {reply!r} (expected {answer!r})")
        total, accuracy = len(expected), correct / len(expected)
        figures = f"{correct}/{total} = {100 * accuracy:.1f}% (chance {100 * chance:.1f}%)"
        print(f"{label or workdir}: accuracy {figures}", flush=True)
        if args.results:
            figures = {"label": label, "workdir": workdir, "correct": correct, "total": total, "accuracy": accuracy}
            figures |= {"chance": chance, "replies": got}
            with open(args.results, "a", encoding="utf-8") as f:
                f.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
