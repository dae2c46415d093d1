"""Published data sets -> jaxgpt task files, with the preprocessing lm-evaluation-harness 0.4.13's task applies.

Each converter reads one published row (a JSON object) and returns one request:
    multiple choice  {"context": str, "choices": [str, ...], "label": int}   scored as context + " " + choice
    cloze            {"context": str, "target": str}                         the target keeps its leading space
The names are lm-eval's task names, and the strings are the ones that task builds for a zero-shot run, so a model
scored on a converted file gets lm-eval's number:
    hellaswag                   activity_label + ": " + ctx_a + " " + ctx_b.capitalize(), WikiHow tags cleaned
    arc_easy, arc_challenge     "Question: {question}\\nAnswer:", gold = the index of answerKey among the labels
    piqa                        "Question: {goal}\\nAnswer:" over [sol1, sol2]
    lambada_openai              all words but the last (split on " ") -> context, " " + the last word -> target
Rows arrive as users download them: the HF hub rows and the original releases (hellaswag_val.jsonl, the AI2 ARC
jsonl, PIQA's valid.jsonl with its labels file valid-labels.lst through `labels`).

Every bad row is an EvalError `IN:LINE: field 'F' = VALUE ...`; the output is written whole or not at all.
This module imports only the standard library and jaxgpt's jax-free modules.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterator

from jaxgpt.errors import EvalError
from jaxgpt.io import atomic_output


class _Row:
    """One JSON object read from a file, with where it came from, so every complaint names IN:LINE and the field."""

    def __init__(self, data: dict, where: str):
        self.data = data
        self.where = where

    def fail(self, key: str, value, problem: str) -> EvalError:
        return EvalError(f"{self.where}: field {key!r} = {_show(value)} {problem}")

    def get(self, key: str, kind: type, data: dict | None = None, at: str = ""):
        """data[key] (data defaults to the row) when present and a `kind`; `at` names where data sits ("question.")."""
        data = self.data if data is None else data
        if not isinstance(data, dict) or key not in data:
            raise EvalError(f"{self.where}: field {at + key!r} is missing")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise self.fail(at + key, data[key], f"is not a {kind.__name__}")
        return data[key]

    def texts(self, key: str, values) -> list[str]:
        """`values` as a non-empty list of non-empty strings: the choices of a multiple-choice request."""
        if not isinstance(values, list) or not values:
            raise self.fail(key, values, "is not a non-empty list")
        for i, text in enumerate(values):
            if not isinstance(text, str):
                raise self.fail(f"{key}[{i}]", text, "is not a str")
            if not text:
                raise self.fail(f"{key}[{i}]", text, "is an empty choice")
        return values

    def index(self, key: str, value, n_choices: int) -> int:
        """A gold index given as an int or a decimal string ("2", as HF's HellaSwag rows hold it), in [0, n_choices)."""
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
            value = int(value)
        if value == "":
            raise self.fail(key, value, "is empty: the row has no label (a test split?)")
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, value, "is not an index into the choices")
        if not 0 <= value < n_choices:
            raise self.fail(key, value, f"is outside the {n_choices} choices")
        return value


def _show(value) -> str:
    """repr(value), cut to 80 characters: a LAMBADA passage in an error message would hide the message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# HellaSwag's WikiHow rows carry tags such as "[header]", "[title]" and "[step]" on one line.
_TAG = re.compile(r"\[[^\]\n]*\]")


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag cleaning, in its order: strip; " [title]" -> ". "; drop tags; one pass of "  " -> " ".

    Whitespace left at the ends after a tag is dropped stays (the strip came first), as it does in lm-eval."""
    text = text.strip().replace(" [title]", ". ")
    return _TAG.sub("", text).replace("  ", " ")


def hellaswag(row: _Row) -> dict:
    """HellaSwag, the GitHub jsonl (label an int) or HF Rowan/hellaswag (label a string such as "2")."""
    # str.capitalize also lowercases the rest of ctx_b ("The US" -> "The us"): lm-eval's query does, so this does.
    ctx = row.get("ctx_a", str) + " " + row.get("ctx_b", str).capitalize()
    context = _hellaswag_clean(row.get("activity_label", str) + ": " + ctx)
    endings = row.texts("endings", row.get("endings", list))
    choices = [_hellaswag_clean(ending) for ending in endings]
    for i, (ending, choice) in enumerate(zip(endings, choices, strict=True)):
        if not choice:
            raise row.fail(f"endings[{i}]", ending, "is an empty choice once its tags are dropped")
    if "label" not in row.data:
        raise EvalError(f"{row.where}: field 'label' is missing: the row has no label (a test split?)")
    return {"context": context, "choices": choices, "label": row.index("label", row.data["label"], len(choices))}


def arc(row: _Row) -> dict:
    """ARC, HF allenai/ai2_arc ({"question": str, "choices": {"text", "label"}}) or the AI2 jsonl
    ({"question": {"stem", "choices": [{"text", "label"}]}}); answerKey is one of the labels ("A".."E" or "1".."5")."""
    question = row.data.get("question")
    if isinstance(question, dict):  # the AI2 release
        stem = row.get("stem", str, question, at="question.")
        options = row.get("choices", list, question, at="question.")
        texts = [row.get("text", str, option, at=f"question.choices[{i}].") for i, option in enumerate(options)]
        labels = [row.get("label", str, option, at=f"question.choices[{i}].") for i, option in enumerate(options)]
        choices_key = "question.choices"
    else:
        stem = row.get("question", str)
        options = row.get("choices", dict)
        texts, labels = row.get("text", list, options, at="choices."), row.get("label", list, options, at="choices.")
        if len(texts) != len(labels):
            raise row.fail("choices.label", labels, f"has {len(labels)} labels for {len(texts)} texts")
        choices_key = "choices.text"
    answer = row.get("answerKey", str)
    if answer not in labels:
        raise row.fail("answerKey", answer, f"is not one of the choice labels {_show(labels)}")
    return {
        "context": f"Question: {stem}\nAnswer:",
        "choices": row.texts(choices_key, texts),
        "label": labels.index(answer),
    }


def piqa(row: _Row) -> dict:
    """PIQA, HF ybisk/piqa rows or the original train/valid.jsonl with their label taken from the labels file."""
    choices = [row.get("sol1", str), row.get("sol2", str)]
    for key, choice in zip(("sol1", "sol2"), choices, strict=True):
        if not choice:
            raise row.fail(key, choice, "is an empty choice")
    if "label" not in row.data:
        raise EvalError(f"{row.where}: field 'label' is missing: give the labels file (--labels valid-labels.lst)")
    return {
        "context": f"Question: {row.get('goal', str)}\nAnswer:",
        "choices": choices,
        "label": row.index("label", row.data["label"], len(choices)),
    }


def lambada(row: _Row) -> dict:
    """LAMBADA ({"text"}: EleutherAI/lambada_openai or OpenAI's lambada_test.jsonl): predict the last word."""
    text = row.get("text", str)
    # Split on single spaces, not on whitespace: lm-eval's context keeps any other whitespace as it is.
    *words, last = text.split(" ")
    if not words or not last or not " ".join(words):
        raise row.fail("text", text, "is not a context and a last word separated by a space")
    return {"context": " ".join(words), "target": " " + last}


CONVERTERS: dict[str, Callable[[_Row], dict]] = {
    "hellaswag": hellaswag,
    "arc": arc,  # ARC Easy and Challenge share one format and lm-eval's preprocessing: the names say which file
    "arc_easy": arc,
    "arc_challenge": arc,
    "piqa": piqa,
    "lambada": lambada,  # = lambada_openai: lm-eval's task of that name reads the same {"text"} rows
    "lambada_openai": lambada,
}


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file; a file that cannot be read is an EvalError."""
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise EvalError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
                if text.strip():
                    yield lineno, text
    except OSError as e:
        raise EvalError(f"{path}: cannot read it ({e.strerror or e})") from None


def _rows(src: str) -> Iterator[_Row]:
    for lineno, text in _lines(src):
        where = f"{src}:{lineno}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvalError(f"{where}: not a JSON line ({e.msg}): {_show(text.strip())}") from None
        if not isinstance(data, dict):
            raise EvalError(f"{where}: {_show(data)} is not a JSON object")
        yield _Row(data, where)


def _labels(path: str) -> list[int]:
    """PIQA's labels file: one 0 or 1 a line, in the order of the rows."""
    labels = []
    for lineno, text in _lines(path):
        if not re.fullmatch(r"[0-9]+", text.strip()):
            raise EvalError(f"{path}:{lineno}: label {_show(text.strip())} is not an index")
        labels.append(int(text))
    return labels


def _with_labels(rows: list[_Row], src: str, path: str) -> list[_Row]:
    """The rows, each with its label from `path` (a row that carries one already keeps it only if they agree)."""
    labels = _labels(path)
    if len(labels) != len(rows):
        raise EvalError(f"{path}: {len(labels)} labels for the {len(rows)} rows of {src}")
    for row, label in zip(rows, labels, strict=True):
        if row.data.setdefault("label", label) != label:
            raise row.fail("label", row.data["label"], f"disagrees with {path}, which gives {label}")
    return rows


def _same_file(a: str, b: str) -> bool:
    """Whether paths `a` and `b` name one file (through links too): converting onto the input would lose it."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def convert(name: str, src: str, dst: str, labels: str | None = None) -> int:
    """Converts the published rows in `src` with CONVERTERS[name] into the task file `dst`; returns the rows written."""
    if name not in CONVERTERS:
        raise EvalError(f"convert: unknown data set {name!r}; one of {', '.join(CONVERTERS)}")
    if labels is not None and CONVERTERS[name] is not piqa:
        raise EvalError(f"convert {name}: --labels={labels} is only for piqa's separate labels file")
    if _same_file(src, dst):
        raise EvalError(f"convert: OUT={dst} is IN; write the task file elsewhere")
    rows = list(_rows(src))
    if not rows:
        raise EvalError(f"{src}: no rows")
    if labels is not None:
        rows = _with_labels(rows, src, labels)
    requests = [CONVERTERS[name](row) for row in rows]
    with atomic_output(dst) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for request in requests:
            f.write(json.dumps(request, ensure_ascii=False) + "\n")
    return len(requests)


def add_convert_flags(p: argparse.ArgumentParser) -> None:
    """`jaxgpt eval convert NAME IN OUT [--labels FILE]`."""
    p.add_argument("name", metavar="NAME", choices=list(CONVERTERS), help=f"one of {', '.join(CONVERTERS)}")
    p.add_argument("src", metavar="IN", help="the published jsonl (HF rows or the original release)")
    p.add_argument("dst", metavar="OUT", help="the jaxgpt task file to write (jsonl)")
    p.add_argument("--labels", metavar="FILE", help="piqa: the labels of IN, one a line (valid-labels.lst)")


def run_convert(args: argparse.Namespace) -> None:
    """The command: converts, then says how many requests it wrote where."""
    n = convert(args.name, args.src, args.dst, args.labels)
    print(f"wrote {n} requests to {args.dst}")
