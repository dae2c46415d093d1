"""Writes mc.jsonl, cloze.jsonl and ppl.jsonl beside this file: hand-written requests for the edge cases, then
requests cut from the long documents of data/raw (Italian and Spanish prose: accents, typographic quotes) whose
contexts and texts outrun a 64-token window. Deterministic: `python tests/data/evals/make_tasks.py` rewrites the same
bytes. README.md says what each file covers."""

import json
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
RAW = HERE.parent.parent.parent / "data" / "raw"


def documents(split: str) -> list[str]:
    """The raw documents of a split longer than 2,000 characters."""
    with open(RAW / f"redpajama_v2_samples_512_{split}.jsonl", encoding="utf-8") as f:
        return [d for d in (json.loads(line)["raw_content"] for line in f) if len(d) > 2000]


IT, ES = documents("test"), documents("train")


def cut(text: str, start: int, n: int) -> str:
    """Up to n characters of text from start, ending before the last space in them."""
    s = text[start : start + n]
    return s[: s.rfind(" ")] if " " in s else s


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


MC = [
    {"context": "Is the sky blue on a clear day? Answer:", "choices": ["yes", "no"], "label": 0},
    {"context": "Question: What is 2 + 2? Answer: ", "choices": ["4", "four", "5", "22"], "label": 0},
    {"context": "The capital of Italy is", "choices": ["Rome", "Milan", "Naples", "Turin"], "label": 0},
    {"context": "The capital of Italy is", "choices": ["Roma", "Firenze"], "label": 0},
    {
        "context": "She flew from New York to",
        "choices": ["New Jersey by train", "New Delhi on a night flight", "Newark", "Boston"],
        "label": 1,
    },
    {
        "context": "Dessert was a",
        "choices": ["crème brûlée", "Sachertorte mit Schlagobers", "tiramisù", "pão de queijo"],
        "label": 0,
    },
    {"context": "東京は日本の", "choices": ["首都です。", "川です。", "山です。"], "label": 0},
    {
        "context": "The rocket lifted off 🚀 and everyone",
        "choices": ["cheered 🎉🎉", "went home 😴", "ate 🍕"],
        "label": 0,
    },
    {
        "context": "The recipe says:\n",
        "choices": ["Mix the flour and the eggs.", "Preheat the oven.\nThen wait."],
        "label": 1,
    },
    {"context": "Two spaces follow this context.  ", "choices": ["one", " two, with its own space"], "label": 1},
    {"context": "A list of primes: 2, 3, 5, 7,", "choices": ["11", "12", "9", "15"], "label": 0},
    {"context": "He said: «", "choices": ["Bonjour", "Guten Tag", "¡Hola!"], "label": 2},
    # acc_norm divides by characters, not bytes: with 3-4 bytes a character, these pick the other choice by bytes
    {"context": "The city is called", "choices": ["東京都", "Q7z"], "label": 1},
    {"context": "He answered with a", "choices": ["🙂🙂", "ok"], "label": 1},
    {"context": "The sign read", "choices": ["🚪➡️", "k9"], "label": 1},
]
CLOZE = [
    {"context": "The capital of France is", "target": " Paris"},
    {"context": "The capital of France is ", "target": "Paris"},
    {"context": "The capital of France is  ", "target": "Paris"},
    {"context": "", "target": "Hello"},
    {"context": "", "target": " Hello world"},
    {"context": "", "target": "<|endoftext|>Once upon a time"},
    {"context": "<|endoftext|>The first words of a document", "target": " follow its start"},
    {"context": "Il gatto dorme sul divano e sogna", "target": " di pesci d'oro"},
    {"context": "日本の首都は", "target": "東京です"},
    {"context": "Emoji test:", "target": " 🙂🙃🙂"},
    {"context": "Line one\n", "target": "Line two"},
    {"context": "Größe, Straße, Fußgänger:", "target": " Müller"},
    {
        "context": "Count:",
        "target": " one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
        " seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four twenty-five",
    },
    # a target of the whole window (the context cut to its last token), and one that fills the window exactly
    {"context": "Say it 64 times:", "target": " word" * 64},
    {"context": "Repeat:", "target": " word" * 63},
]
PPL = [
    {"text": "Hello"},
    {"text": "a"},
    {"text": "Hello there, this is a short text.  With two spaces\nand a newline."},
    {"text": "  Leading spaces and a trailing newline\n"},
    {"text": "Tabs\tand\tmore   spaces\n\nand blank lines."},
    {"text": "日本語のテキストです。東京、大阪、京都。"},
    {"text": "Emoji 🙂🙃 and rockets 🚀🚀🚀 in a line of text ✨"},
    {"text": "Crème brûlée, naïve café, Ångström, señor, Größe."},
    {"text": "One document ends here.<|endoftext|>Another one starts here."},
    {"text": "<|endoftext|>A text that starts with the prefix token."},
    {"text": "word" + " word" * 63},  # 64 tokens: one full window
    {"text": "word" + " word" * 64},  # 65 tokens: a second window of one token
]


def long_mc() -> list[dict]:
    """A passage's opening as the context; choices: two continuations of it, two pieces of another passage."""
    sources = [IT[3], IT[11], IT[20], IT[33], ES[5], ES[9], ES[14], ES[27]]
    sources += [IT[41], ES[40], IT[55], ES[61], IT[70], ES[80], IT[90], ES[99]]
    out = []
    for k, text in enumerate(sources):
        text = one_line(text)
        context = cut(text, 0, 260 + 37 * (k % 5))
        rest = text[len(context) :]
        choices = [cut(rest, 0, 40 + 11 * j) or rest[:30] for j in range(2)]
        other = one_line(sources[(k + 3) % len(sources)])
        choices += [cut(other, 100, 25 + 17 * j) for j in range(2)]
        out.append({"context": context, "choices": [c.strip() for c in choices], "label": 0})
    return out


def long_cloze() -> list[dict]:
    """A passage's opening as the context, the word after the next as the target (LAMBADA's form: " " + word)."""
    sources = [IT[5], IT[12], IT[18], IT[25], ES[7], ES[17], ES[22], IT[31], ES[33]]
    sources += [IT[44], ES[50], IT[60], ES[66], IT[77], ES[88], IT[95], ES[101]]
    out = []
    for k, text in enumerate(sources):
        text = one_line(text)
        context = cut(text, 0, 120 + 60 * (k % 6))
        words = text[len(context) :].split(" ")
        out.append({"context": context, "target": " " + (words[1] if len(words) > 1 else "fine")})
    return out


def long_ppl() -> list[dict]:
    """Openings of 170 to 1,100 characters, newlines kept: 2 to 6 rolling windows of 64 tokens."""
    sources = [(IT[15], 300), (ES[11], 170), (IT[27], 500), (ES[19], 800), (IT[36], 1100), (ES[24], 420)]
    sources += [(IT[48], 650), (ES[30], 950)]
    return [{"text": text[:n]} for text, n in sources]


def main() -> None:
    for name, rows in [("mc", MC + long_mc()), ("cloze", CLOZE + long_cloze()), ("ppl", PPL + long_ppl())]:
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        print(f"{name}.jsonl: {len(rows)} requests")


if __name__ == "__main__":
    main()
