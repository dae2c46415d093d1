"""Writes the tutorial's synthetic data and its tokenizer: a task a tiny model learns on a CPU in minutes.

Each conversation asks for one word of a short list, which the reply copies from the user's message:

    User: first word of (cat,moon,red,oak)    Assistant: cat
    User: last word of (cat,moon,red,oak)     Assistant: oak

    python tutorials/instruction_tuning/make_data.py --out DIR [--conversations N] [--held_out M] [--documents K]

writes, into DIR:
- conversations.jsonl: N conversations in Modalities' format, {"messages": [{"role": "user"|"assistant", "content":
  ...}, ...]}, a fraction with two exchanges (two lists), for `jaxgpt data prepare_instruction_tuning_data`;
- held_out.jsonl: M conversations from another seed whose lists occur nowhere in the two files above (one exchange,
  or two where the first is answered and the second is asked), each with its "chance" (below), for evaluate.py;
- pretrain.jsonl: K plain-text documents, {"text": ...}, of sentences that state answers, without roles or markers
  ("The last word of (cat,moon,red,oak) is oak."): the data of the warm start;
- tokenizer/: a word-level tokenizer.json (and tokenizer_config.json) of the 90 words and signs of all of the above
  and of the chat template, with <|endoftext|>, ^ and $ as special tokens. With GPT-2's 50,257 tokens the vocab
  projection would be most of the work (6.4M of the tutorial model's 6.7M multiply-adds a token); at configs/tiny.py's
  width 64 a step took about 12x as long with it (0.7 s against 0.06 s for 16 x 64 tokens on a 2-core CPU).

Chance: a reply that picks one word of the list at random is right with probability 1/len(list).
"""

import argparse
import json
import os
import random

WORDS = (  # the lists' words, one token each
    "red blue green gold gray black white cat dog cow fox owl bee ant bat rat hen sun moon star sky rain wind fire ice"
    " tree leaf rose oak pine apple lime fig nut egg cake bread rice corn box cup pen ink map key ring bell book door"
    " bed car bus ship boat train road hill lake sea river rock sand stone gem king man boy girl baby"
).split()
KINDS = ("first", "last")
# List lengths. Training holds lists of one or two words too, where the answer sits next to a bracket: an easier start
# for the copy that longer lists need
TRAIN_WORDS, HELD_OUT_WORDS = (1, 6), (3, 6)
TWO_EXCHANGES = 0.2  # the fraction of conversations with a second question

SPECIAL_TOKENS = ("<|endoftext|>", "^", "$")  # end of text and the loss markers of apply_chat_template.yaml
# Everything else a text holds: the chat template's (system_instruction, role names), the questions' and the
# pretraining sentences' words, and the signs. Whitespace (the template's newlines too) only separates tokens; [UNK]
# stands for anything else (tests/test_tutorial_instruction_tuning.py checks that none occurs).
OTHER_TOKENS = (
    "[UNK]",
    *"( ) , : .".split(),
    *"You copy words User Assistant System".split(),
    *"The first last word of is".split(),
)


def draw_list(rng: random.Random, avoid: set, lengths: tuple[int, int]) -> tuple[str, ...]:
    while True:
        words = tuple(rng.sample(WORDS, rng.randint(*lengths)))
        if words not in avoid:
            return words


def question(kind: str, words: tuple[str, ...]) -> tuple[str, str]:
    """(the question, its answer)."""
    return f"{kind} word of ({','.join(words)})", words[0] if kind == "first" else words[-1]


def conversation(rng: random.Random, exchanges: int, avoid: set, lengths: tuple[int, int]):
    """(the messages, the lists they ask about)."""
    messages, lists = [], []
    for _ in range(exchanges):
        words = draw_list(rng, avoid, lengths)
        user, reply = question(rng.choice(KINDS), words)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        lists.append(words)
    return messages, lists


def document(rng: random.Random, sentences: int, avoid: set) -> str:
    """Plain text that states answers: the task's knowledge without the chat format."""
    text = []
    for _ in range(sentences):
        user, reply = question(rng.choice(KINDS), draw_list(rng, avoid, TRAIN_WORDS))
        text.append(f"The {user} is {reply}.")
    return " ".join(text)


def write_tokenizer(folder: str) -> None:
    """A word-level tokenizer.json: the special tokens split out first, then whitespace and single signs."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *OTHER_TOKENS, *WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_max_length": 1024, "eos_token": SPECIAL_TOKENS[0], "unk_token": "[UNK]"}, f, indent=2)


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the folder to write into")
    parser.add_argument("--conversations", type=int, default=4000, help="instruction-tuning conversations")
    parser.add_argument("--held_out", type=int, default=200, help="held-out conversations for the accuracy")
    parser.add_argument("--documents", type=int, default=4000, help="plain-text pretraining documents")
    parser.add_argument("--seed", type=int, default=0, help="the training data's seed; the held-out set's is seed + 1")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    # The held-out lists are drawn first, from their own seed; the training data avoids them
    held_rng, held_out, held_lists = random.Random(args.seed + 1), [], set()
    for _ in range(args.held_out):
        exchanges = 2 if held_rng.random() < TWO_EXCHANGES else 1
        messages, lists = conversation(held_rng, exchanges, held_lists, HELD_OUT_WORDS)
        held_out.append({"messages": messages, "chance": 1 / len(lists[-1])})
        held_lists.update(lists)

    rng = random.Random(args.seed)
    train = []
    for _ in range(args.conversations):
        exchanges = 2 if rng.random() < TWO_EXCHANGES else 1
        train.append({"messages": conversation(rng, exchanges, held_lists, TRAIN_WORDS)[0]})
    docs = [{"text": document(rng, rng.randint(1, 3), held_lists)} for _ in range(args.documents)]

    write_jsonl(os.path.join(args.out, "conversations.jsonl"), train)
    write_jsonl(os.path.join(args.out, "held_out.jsonl"), held_out)
    write_jsonl(os.path.join(args.out, "pretrain.jsonl"), docs)
    write_tokenizer(os.path.join(args.out, "tokenizer"))
    chance = sum(row["chance"] for row in held_out) / len(held_out)
    print(
        f"make_data: {len(train)} conversations, {len(held_out)} held out, {len(docs)} pretraining documents and a"
        f" tokenizer of {len(SPECIAL_TOKENS) + len(OTHER_TOKENS) + len(WORDS)} tokens in {args.out}; chance of an"
        f" exact match (a word of the list at random) {100 * chance:.1f}%"
    )


if __name__ == "__main__":
    main()
