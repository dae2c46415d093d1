"""Task specs (`NAME:KIND:PATH[@N]`) and task files: JSONL, one request per line, checked field by field.

The three kinds and their fields (the documented format; docs/evaluation.md):
    multiple_choice  {"context": str, "choices": [str, ...], "label": int}   scored: context + " " + choice
    cloze            {"context": str, "target": str}                          scored: context + target, verbatim
    perplexity       {"text": str}                                            scored: the whole text, rolling windows
A cloze target is scored as written, as lm-eval scores its `loglikelihood` tasks (LAMBADA's target is " " + the last
word), so it carries its own leading space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings

from jaxgpt.errors import EvalError

KINDS = ("multiple_choice", "cloze", "perplexity")
FIELDS = {  # each kind's fields and their types, checked on every line
    "multiple_choice": {"context": str, "choices": list, "label": int},
    "cloze": {"context": str, "target": str},
    "perplexity": {"text": str},
}
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")  # a task's name is a metric key (eval/<task>/<metric>) and a JSON key


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One `--task` / `train.eval_tasks` entry."""

    name: str  # the task's name in metrics, tables and evals/step_<N>.json
    kind: str  # one of KINDS
    path: str  # the JSONL task file
    limit: int | None = None  # @N: score only the first N requests (None: all)

    @classmethod
    def parse(cls, spec: str, where: str = "--task") -> TaskSpec:
        """`NAME:KIND:PATH` or `NAME:KIND:PATH@N`; `where` names the flag or key in errors."""
        parts = spec.split(":", 2) if isinstance(spec, str) else []
        if len(parts) != 3 or not all(parts):
            raise EvalError(f"{where}={spec!r} must be NAME:KIND:PATH[@N], KIND one of {KINDS}")
        name, kind, path = parts
        if not _NAME.fullmatch(name):
            raise EvalError(f"{where}={spec!r}: task name {name!r} may hold only letters, digits, '_', '.', '-'")
        if kind not in KINDS:
            raise EvalError(f"{where}={spec!r}: unknown kind {kind!r}; one of {KINDS}")
        limit = None
        head, at, tail = path.rpartition("@")
        if at and tail.isdigit():
            path, limit = head, int(tail)
            if limit < 1:
                raise EvalError(f"{where}={spec!r}: @{tail} must ask for at least 1 request")
        return cls(name, kind, path, limit)

    def __str__(self) -> str:
        return f"{self.name}:{self.kind}:{self.path}" + ("" if self.limit is None else f"@{self.limit}")


@dataclasses.dataclass(frozen=True)
class Task:
    """A task file read and checked."""

    spec: TaskSpec
    docs: tuple[dict, ...]  # the requests, in file order (the first `limit` of them)
    lines: tuple[int, ...]  # each request's line number in the file (errors name it)
    sha256: str  # of the whole file's bytes: in-loop evaluation refuses a file that changed

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


def parse_specs(specs, where: str = "--task") -> list[TaskSpec]:
    """TaskSpecs of a list of strings; names must be unique."""
    parsed = [TaskSpec.parse(s, where) for s in specs]
    names = [s.name for s in parsed]
    for name in names:
        if names.count(name) > 1:
            raise EvalError(f"{where}: task name {name!r} is given twice; names key the metrics")
    return parsed


def file_sha256(path: str) -> str:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError as e:
        raise EvalError(f"{path}: task file cannot be read ({e.strerror})") from None


def load_task(spec: TaskSpec) -> Task:
    """The task's requests, every line checked; an error names the file, the line and the field."""
    digest = file_sha256(spec.path)
    docs, lines = [], []
    with open(spec.path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if spec.limit is not None and len(docs) == spec.limit:
                break
            if not raw.strip():
                continue
            docs.append(check_doc(_json(raw, spec.path, number), spec.kind, f"{spec.path}:{number}"))
            lines.append(number)
    if not docs:
        raise EvalError(f"{spec.path}: no requests in the task file")
    if spec.kind == "cloze":
        _warn_spaces(spec.path, docs)
    return Task(spec, tuple(docs), tuple(lines), digest)


def _json(raw: bytes, path: str, number: int) -> dict:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}:{number}: not a JSON line ({e})") from None
    if not isinstance(doc, dict):
        raise EvalError(f"{path}:{number}: a request must be a JSON object, got {type(doc).__name__}")
    return doc


def check_doc(doc: dict, kind: str, where: str) -> dict:
    """The request's fields of its kind (others are ignored), each of its type and usable; `where` is FILE:LINE."""
    out = {}
    for field, kind_type in FIELDS[kind].items():
        if field not in doc:
            raise EvalError(f"{where}: missing field {field!r} (a {kind} request has {list(FIELDS[kind])})")
        value = doc[field]
        if not isinstance(value, kind_type) or isinstance(value, bool):
            raise EvalError(f"{where}: field {field!r} must be a {kind_type.__name__}, got {value!r:.80}")
        out[field] = value
    if kind == "multiple_choice":
        choices = out["choices"]
        if len(choices) < 2:
            raise EvalError(f"{where}: field 'choices' needs at least 2 choices, got {choices!r:.80}")
        for i, choice in enumerate(choices):
            if not isinstance(choice, str) or not choice:
                raise EvalError(f"{where}: field 'choices' entry {i} must be a non-empty string, got {choice!r:.80}")
        if not 0 <= out["label"] < len(choices):
            raise EvalError(f"{where}: field 'label'={out['label']} is outside the {len(choices)} choices")
    if kind == "cloze" and not out["target"]:
        raise EvalError(f"{where}: field 'target' is empty")
    if kind == "perplexity" and not out["text"]:
        raise EvalError(f"{where}: field 'text' is empty")
    return out


def _warn_spaces(path: str, docs: list[dict]) -> None:
    """A cloze target is scored verbatim: "is" + "Paris" scores the token "Paris", not " Paris". Say so once when no
    request has a space between its context and target, the likely sign of targets written without theirs."""
    joined = [d["context"][-1:].isspace() or d["target"][:1].isspace() or not d["context"] for d in docs]
    if not any(joined):
        warnings.warn(
            f"{path}: no cloze request has a space between its context and target; a target is scored verbatim"
            " after the context, so write targets with their leading space (' Paris')",
            stacklevel=3,
        )


def check_unchanged(task: Task) -> None:
    """In-loop evaluation: the file must hold what it held at the run's first evaluation (curves of one task)."""
    now = file_sha256(task.spec.path)
    if now != task.sha256:
        raise EvalError(
            f"{task.spec.path}: task {task.name!r} changed during the run (sha256 {task.sha256[:12]}..."
            f" -> {now[:12]}...); its curve would mix two tasks: restore the file, or give the new one another name"
        )
