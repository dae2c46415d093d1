"""`jaxgpt eval convert`: published HellaSwag, ARC, PIQA and LAMBADA rows -> jaxgpt task files.

Hand-written rows in each published format -> the exact lines expected; the same rows through lm-evaluation-harness
0.4.13's own tasks (its YAMLs and utils.py, in the lm-eval venv, offline) -> the same contexts, continuations and
golds; one EvalError per kind of bad input. No jax: the converters are part of the jax-free tools.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from jaxgpt.errors import EvalError
from jaxgpt.evals.convert import add_convert_flags, convert, run_convert

LMEVAL_PYTHON = REPO / ".bench_cache" / "lmeval-venv" / "bin" / "python"
needs_lmeval = pytest.mark.skipif(not LMEVAL_PYTHON.exists(), reason=f"lm-eval venv absent ({LMEVAL_PYTHON})")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def converted(tmp_path, name, rows, labels=None) -> list[str]:
    """The lines `convert(name, ...)` writes for `rows` (a labels file from `labels` if given)."""
    src = write_jsonl(tmp_path / f"{name}_in.jsonl", rows)
    labels_file = None
    if labels is not None:
        labels_file = tmp_path / f"{name}_labels.lst"
        labels_file.write_text("".join(f"{label}\n" for label in labels))
    dst = tmp_path / f"{name}_out.jsonl"
    assert convert(name, src, str(dst), None if labels_file is None else str(labels_file)) == len(rows)
    return dst.read_text(encoding="utf-8").splitlines()


def lines(*requests) -> list[str]:
    return [json.dumps(request, ensure_ascii=False) for request in requests]


# Published rows (shaped as the releases ship them; the texts are made up)
# ------------------------------------------------------------------------------------------------------------------

# hellaswag_val.jsonl from GitHub: label an int. A WikiHow row (tags; ctx_b empty, as WikiHow rows have it) and an
# ActivityNet row whose ctx_b starts lowercase and has capitals that str.capitalize lowers.
HELLASWAG_GITHUB = [
    {
        "ind": 24,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to clean a cast iron skillet [title] Rinse the skillet with hot water. [step] Scrub "
        "away food with a stiff brush.",
        "ctx_b": "",
        "ctx": "[header] How to clean a cast iron skillet [title] Rinse the skillet with hot water. [step] Scrub away "
        "food with a stiff brush.",
        "split": "val",
        "split_type": "indomain",
        "label": 0,
        "endings": [
            "[title] Dry the skillet right away. [step] Water left on the iron causes rust.",
            "Soak it overnight in soapy water [substeps]",
            "[title] Put the skillet in the dishwasher.  [step] Use the hottest setting.",
            "Paint the skillet with a crème brûlée glaze.",
        ],
        "source_id": "wikihow~12345",
    },
    {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car.",
        "ctx_b": "the man in the US jacket",
        "ctx": "Then, the man writes over the snow covering the window of a car. The man in the US jacket",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "adds wax to the windshield and cuts it.",
            "boards a ski lift.",
            "puts on a christmas coat, knitted with netting.",
            "continues removing the snow on his car.",
        ],
        "source_id": "activitynet~v_-1IBHYS3L-Y",
    },
]
HELLASWAG_HF = [{**row, "label": str(row["label"])} for row in HELLASWAG_GITHUB]  # Rowan/hellaswag: label "0"
HELLASWAG_EXPECTED = lines(
    {
        "context": "Home and Garden: How to clean a cast iron skillet. Rinse the skillet with hot water. Scrub away "
        "food with a stiff brush.",
        "choices": [
            # a leading tag leaves its space (no " [title]" at the start of a stripped ending), a trailing one its
            # space before it: lm-eval scores these as they are
            " Dry the skillet right away. Water left on the iron causes rust.",
            "Soak it overnight in soapy water ",
            " Put the skillet in the dishwasher.  Use the hottest setting.",  # 3 spaces: one pass of "  " -> " "
            "Paint the skillet with a crème brûlée glaze.",
        ],
        "label": 0,
    },
    {
        "context": "Removing ice from car: Then, the man writes over the snow covering the window of a car. The man in "
        "the us jacket",
        "choices": HELLASWAG_GITHUB[1]["endings"],
        "label": 3,
    },
)

# allenai/ai2_arc rows: a letter answerKey, and a numeric one (labels "1".."4", as some ARC rows have them)
ARC_HF = [
    {
        "id": "Mercury_7175875",
        "question": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
        "likely effect of this increase in rotation?",
        "choices": {
            "text": [
                "Planetary density will decrease.",
                "Planetary years will become longer.",
                "Planetary days will become shorter.",
                "Planetary gravity will become stronger.",
            ],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "C",
    },
    {
        "id": "NYSEDREGENTS_2015_4_28",
        "question": "Which object in our solar system reflects light and is a natural satellite that orbits "
        "Earth?\n(1) Sun (2) Moon (3) Mars (4) comet",
        "choices": {"text": ["Sun", "Moon", "Mars", "comet"], "label": ["1", "2", "3", "4"]},
        "answerKey": "2",
    },
]
# The same questions as the AI2 release (ARC-Challenge-Dev.jsonl) words them
ARC_AI2 = [
    {
        "id": row["id"],
        "question": {
            "stem": row["question"],
            "choices": [{"text": t, "label": k} for t, k in zip(row["choices"]["text"], row["choices"]["label"])],
        },
        "answerKey": row["answerKey"],
    }
    for row in ARC_HF
]
ARC_EXPECTED = lines(
    {
        "context": f"Question: {ARC_HF[0]['question']}\nAnswer:",
        "choices": ARC_HF[0]["choices"]["text"],
        "label": 2,
    },
    {
        "context": f"Question: {ARC_HF[1]['question']}\nAnswer:",
        "choices": ["Sun", "Moon", "Mars", "comet"],
        "label": 1,
    },
)

# ybisk/piqa rows; the original valid.jsonl has the same rows without "label", which valid-labels.lst holds
PIQA_HF = [
    {
        "goal": "How do I ready a guinea pig cage for it's new occupants?",
        "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
        "you will also need to supply it with a water bottle and a food dish.",
        "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, "
        "you will also need to supply it with a water bottle and a food dish.",
        "label": 0,
    },
    {
        "goal": "To make a café au lait,",
        "sol1": "pour hot coffee into a mug of cold milk.",
        "sol2": "pour hot coffee and steamed milk into a mug, half and half.",
        "label": 1,
    },
]
PIQA_ORIGINAL = [{key: value for key, value in row.items() if key != "label"} for row in PIQA_HF]
PIQA_EXPECTED = lines(
    *(
        {"context": f"Question: {row['goal']}\nAnswer:", "choices": [row["sol1"], row["sol2"]], "label": row["label"]}
        for row in PIQA_HF
    )
)

# EleutherAI/lambada_openai rows (OpenAI's lambada_test.jsonl has the same {"text"} rows)
LAMBADA = [
    {"text": "\u201cShe is not coming back,\u201d he said. Marie nodded and closed the door behind Ren\u00e9e"},
    {"text": "he turned the key twice and pulled, but the old lock would not open the  door"},
]
LAMBADA_EXPECTED = lines(
    {
        "context": "\u201cShe is not coming back,\u201d he said. Marie nodded and closed the door behind",
        "target": " Ren\u00e9e",
    },
    # split on " ": a double space leaves an empty word, and the context ends in a space, as in lm-eval
    {"context": "he turned the key twice and pulled, but the old lock would not open the ", "target": " door"},
)


# Each converter -> the exact lines
# ------------------------------------------------------------------------------------------------------------------


def test_hellaswag_both_releases(tmp_path):
    assert converted(tmp_path, "hellaswag", HELLASWAG_GITHUB) == HELLASWAG_EXPECTED
    assert converted(tmp_path, "hellaswag", HELLASWAG_HF) == HELLASWAG_EXPECTED


def test_arc_both_releases_both_sets(tmp_path):
    for name in ("arc_easy", "arc_challenge"):
        assert converted(tmp_path, name, ARC_HF) == ARC_EXPECTED
        assert converted(tmp_path, name, ARC_AI2) == ARC_EXPECTED


def test_piqa_rows_with_labels_or_a_labels_file(tmp_path):
    assert converted(tmp_path, "piqa", PIQA_HF) == PIQA_EXPECTED
    assert converted(tmp_path, "piqa", PIQA_ORIGINAL, labels=[0, 1]) == PIQA_EXPECTED
    assert converted(tmp_path, "piqa", PIQA_HF, labels=[0, 1]) == PIQA_EXPECTED  # a file that agrees is fine


def test_lambada(tmp_path):
    assert converted(tmp_path, "lambada_openai", LAMBADA) == LAMBADA_EXPECTED


def test_output_is_utf8_json_lines_keeping_non_ascii(tmp_path):
    converted(tmp_path, "lambada_openai", LAMBADA)
    raw = (tmp_path / "lambada_openai_out.jsonl").read_bytes()
    assert "Ren\u00e9e".encode() in raw and b"\\u" not in raw
    assert raw.endswith(b"\n") and raw.count(b"\n") == len(LAMBADA)


def test_blank_lines_are_skipped_and_numbered(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(f'\n{json.dumps(LAMBADA[0])}\n\n{{"text": "one"}}\n')
    with pytest.raises(EvalError, match=r"in\.jsonl:4: field 'text'"):
        convert("lambada_openai", str(src), str(tmp_path / "out.jsonl"))


def test_command_line(tmp_path, capsys):
    src = write_jsonl(tmp_path / "valid.jsonl", PIQA_ORIGINAL)
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    dst = tmp_path / "piqa.jsonl"
    p = argparse.ArgumentParser()
    add_convert_flags(p)
    run_convert(p.parse_args(["piqa", src, str(dst), "--labels", str(tmp_path / "valid-labels.lst")]))
    assert capsys.readouterr().out == f"wrote 2 requests to {dst}\n"
    assert dst.read_text(encoding="utf-8").splitlines() == PIQA_EXPECTED
    with pytest.raises(SystemExit):
        p.parse_args(["squad", src, str(dst)])


def test_module_imports_no_jax():
    code = "import sys, jaxgpt.evals.convert; assert 'jax' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


# The same rows through lm-eval 0.4.13's own tasks
# ------------------------------------------------------------------------------------------------------------------

# Run by the lm-eval venv's python with the jsonl files as argv: for each, a task YAML that includes lm-eval's own
# (process_docs, doc_to_text, doc_to_choice, doc_to_target as shipped) and only swaps the HF dataset for the local
# file; TaskManager builds it, build_all_requests makes its zero-shot requests, and the script writes, per document,
# the context, the continuations and the gold that lm-eval would score.
LMEVAL_SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    out, folder, *jobs = sys.argv[1:]
    shipped = pathlib.Path(lm_eval.tasks.__file__).parent
    for job in jobs:
        name, yaml_file, data = job.split("=")
        files = {split: data for split in ("train", "validation", "test")}
        spec = {"include": str(shipped / yaml_file), "task": name, "dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": files}}
        pathlib.Path(folder, name + ".yaml").write_text(json.dumps(spec))  # JSON is YAML
    tasks = TaskManager(include_defaults=False, include_path=folder).load([job.split("=")[0] for job in jobs])
    result = {}
    for name, task in tasks["tasks"].items():
        task.build_all_requests(rank=0, world_size=1)
        docs = {}
        for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
            doc = docs.setdefault(instance.doc_id, {"contexts": set(), "continuations": []})
            doc["contexts"].add(instance.arguments[0])
            doc["continuations"].append(instance.arguments[1])
            doc["gold"] = task.doc_to_target(instance.doc)
        result[name] = [{**doc, "contexts": sorted(doc["contexts"])} for _, doc in sorted(docs.items())]
    pathlib.Path(out).write_text(json.dumps(result))
""")

LMEVAL_CASES = {  # case: (lm-eval's YAML, our converter, rows in a format lm-eval reads as they are)
    "hellaswag_github": ("hellaswag/hellaswag.yaml", "hellaswag", HELLASWAG_GITHUB),
    "hellaswag_hf": ("hellaswag/hellaswag.yaml", "hellaswag", HELLASWAG_HF),
    "arc_easy": ("arc/arc_easy.yaml", "arc_easy", ARC_HF),
    "arc_challenge": ("arc/arc_challenge.yaml", "arc_challenge", ARC_HF),
    "piqa": ("piqa/piqa.yaml", "piqa", PIQA_HF),
    "lambada_openai": ("lambada/lambada_openai.yaml", "lambada_openai", LAMBADA),
}


@needs_lmeval
def test_equals_lm_eval_tasks(tmp_path):
    jobs = []
    for case, (yaml_file, _, rows) in LMEVAL_CASES.items():
        jobs.append(f"jaxgpt_{case}={yaml_file}={write_jsonl(tmp_path / f'{case}.jsonl', rows)}")
    (tmp_path / "tasks").mkdir()
    hf = str(tmp_path / "hf")  # offline, and its caches in the test's folder
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's own packages only
    env.update(HF_HOME=hf, HF_DATASETS_CACHE=hf, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    cmd = [str(LMEVAL_PYTHON), "-c", LMEVAL_SCRIPT, str(tmp_path / "lm_eval.json"), str(tmp_path / "tasks"), *jobs]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    lm_eval = json.loads((tmp_path / "lm_eval.json").read_text())

    for case, (_, name, rows) in LMEVAL_CASES.items():
        ours = [json.loads(line) for line in converted(tmp_path, name, rows)]
        theirs = lm_eval[f"jaxgpt_{case}"]
        assert len(theirs) == len(ours) == len(rows), case
        for request, doc in zip(ours, theirs):
            assert doc["contexts"] == [request["context"]], case
            if "target" in request:  # cloze: one continuation, scored verbatim
                assert doc["continuations"] == [request["target"]] == [doc["gold"]], case
            else:  # multiple choice: lm-eval's target_delimiter " " before each choice
                assert doc["continuations"] == [" " + choice for choice in request["choices"]], case
                assert doc["gold"] == request["label"], case


# Bad input: one EvalError, one line, naming the file, the line, the field and the value
# ------------------------------------------------------------------------------------------------------------------

HS, ARC, PIQA = HELLASWAG_GITHUB[1], ARC_HF[1], PIQA_HF[0]
BAD_ROWS = {  # case: (converter, the bad row, what the message must say after IN:1:)
    "hellaswag_test_row": ("hellaswag", {**HS, "label": ""}, r"field 'label' = '' is empty: the row has no label"),
    "hellaswag_no_label": ("hellaswag", {k: v for k, v in HS.items() if k != "label"}, r"field 'label' is missing"),
    "hellaswag_label_4": ("hellaswag", {**HS, "label": 4}, r"field 'label' = 4 is outside the 4 choices"),
    "hellaswag_label_word": ("hellaswag", {**HS, "label": "two"}, r"field 'label' = 'two' is not an index"),
    "hellaswag_no_ctx_b": ("hellaswag", {k: v for k, v in HS.items() if k != "ctx_b"}, r"field 'ctx_b' is missing"),
    "hellaswag_endings_str": ("hellaswag", {**HS, "endings": "x"}, r"field 'endings' = 'x' is not a list"),
    "hellaswag_tag_only": (
        "hellaswag",
        {**HS, "endings": ["a", "[step]", "c", "d"]},
        r"field 'endings\[1\]' = '\[step\]' is an empty choice once its tags are dropped",
    ),
    "arc_key_not_a_label": ("arc_easy", {**ARC, "answerKey": "B"}, r"field 'answerKey' = 'B' is not one of the choice"),
    "arc_empty_choice": (
        "arc_challenge",
        {**ARC, "choices": {"text": ["Sun", "", "Mars", "comet"], "label": ["1", "2", "3", "4"]}},
        r"field 'choices.text\[1\]' = '' is an empty choice",
    ),
    "arc_labels_short": (
        "arc_easy",
        {**ARC, "choices": {"text": ["Sun", "Moon"], "label": ["1"]}},
        r"field 'choices.label' = \['1'\] has 1 labels for 2 texts",
    ),
    "arc_ai2_no_stem": ("arc_easy", {**ARC_AI2[0], "question": {"choices": []}}, r"field 'question.stem' is missing"),
    "arc_ai2_choice_text": (
        "arc_easy",
        {**ARC_AI2[0], "question": {"stem": "Why?", "choices": [{"text": 3, "label": "A"}]}},
        r"field 'question.choices\[0\].text' = 3 is not a str",
    ),
    "piqa_test_row": ("piqa", {**PIQA, "label": -1}, r"field 'label' = -1 is outside the 2 choices"),
    "piqa_no_label": ("piqa", PIQA_ORIGINAL[0], r"field 'label' is missing: give the labels file"),
    "piqa_empty_sol2": ("piqa", {**PIQA, "sol2": ""}, r"field 'sol2' = '' is an empty choice"),
    "piqa_goal_null": ("piqa", {**PIQA, "goal": None}, r"field 'goal' = None is not a str"),
    "lambada_one_word": ("lambada_openai", {"text": "door"}, r"field 'text' = 'door' is not a context and a last"),
    "lambada_trailing_space": ("lambada_openai", {"text": "open the "}, r"field 'text' = 'open the ' is not"),
    "lambada_no_text": ("lambada_openai", {"passage": "a b"}, r"field 'text' is missing"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row(tmp_path, case):
    name, row, message = BAD_ROWS[case]
    src = write_jsonl(tmp_path / "in.jsonl", [row, row])
    with pytest.raises(EvalError, match=rf"^{re.escape(src)}:1: {message}") as error:
        convert(name, src, str(tmp_path / "out.jsonl"))
    assert "\n" not in str(error.value)
    assert os.listdir(tmp_path) == ["in.jsonl"]


@pytest.mark.parametrize(
    "case, text, message",
    [
        ("not_json", '{"text": "a b"}\n{"text": "a b",\n', r":2: not a JSON line \("),
        ("not_an_object", '{"text": "a b"}\n["a", "b"]\n', r":2: \['a', 'b'\] is not a JSON object"),
        ("not_utf8", b'{"text": "a b"}\n{"text": "caf\xe9 b"}\n', r":2: not UTF-8"),
        ("empty", "\n", r": no rows"),
    ],
)
def test_bad_file(tmp_path, case, text, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(EvalError, match=rf"^{re.escape(str(src))}{message}"):
        convert("lambada_openai", str(src), str(tmp_path / "out.jsonl"))


def test_unreadable_input(tmp_path):
    with pytest.raises(EvalError, match=rf"^{re.escape(str(tmp_path))}/absent.jsonl: cannot read it \(No such file"):
        convert("piqa", str(tmp_path / "absent.jsonl"), str(tmp_path / "out.jsonl"))
    with pytest.raises(EvalError, match=rf"^{re.escape(str(tmp_path))}: cannot read it \(Is a directory"):
        convert("piqa", str(tmp_path), str(tmp_path / "out.jsonl"))


def test_labels_file_must_match_the_rows(tmp_path):
    src = write_jsonl(tmp_path / "valid.jsonl", PIQA_ORIGINAL)
    labels = tmp_path / "valid-labels.lst"
    for text, message in [
        ("0\n1\n1\n", rf"^{re.escape(str(labels))}: 3 labels for the 2 rows of {re.escape(src)}$"),
        ("0\nx\n", rf"^{re.escape(str(labels))}:2: label 'x' is not an index$"),
        ("0\n2\n", rf"^{re.escape(src)}:2: field 'label' = 2 is outside the 2 choices$"),
    ]:
        labels.write_text(text)
        with pytest.raises(EvalError, match=message):
            convert("piqa", src, str(tmp_path / "out.jsonl"), str(labels))
    labels.write_text("1\n1\n")
    with pytest.raises(EvalError, match=rf"^{re.escape(str(tmp_path / 'hf.jsonl'))}:1: field 'label' = 0 disagrees"):
        convert("piqa", write_jsonl(tmp_path / "hf.jsonl", PIQA_HF), str(tmp_path / "out.jsonl"), str(labels))
    with pytest.raises(EvalError, match=r"--labels=.* is only for piqa"):
        convert("hellaswag", src, str(tmp_path / "out.jsonl"), str(labels))


def test_a_failed_conversion_leaves_an_existing_output_alone(tmp_path):
    dst = tmp_path / "out.jsonl"
    dst.write_text("the previous task file\n")
    src = write_jsonl(tmp_path / "in.jsonl", [LAMBADA[0], {"text": "one"}])
    with pytest.raises(EvalError, match=r"in\.jsonl:2: "):
        convert("lambada_openai", src, str(dst))
    assert dst.read_text() == "the previous task file\n" and sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl"]


def test_refuses_to_overwrite_its_input(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", LAMBADA)
    os.link(src, tmp_path / "hardlink.jsonl")
    for dst in (src, str(tmp_path / "." / "in.jsonl"), str(tmp_path / "hardlink.jsonl")):
        with pytest.raises(EvalError, match=r"OUT=.* is IN"):
            convert("lambada_openai", src, dst)
    assert [json.loads(line) for line in open(src, encoding="utf-8")] == LAMBADA
