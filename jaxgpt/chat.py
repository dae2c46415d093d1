"""Chat with an instruction-tuned run: the conversation rendered by the run's own chat template, the reply generated.

    python -m jaxgpt.generate --workdir=DIR --chat                       # interactive on a terminal
    python -m jaxgpt.generate --workdir=DIR --chat --prompt="add 17 and 25"   # or --prompts_file F: one reply each

The recipe is what the data was prepared with: the instruction-tuning YAML of `jaxgpt data
prepare_instruction_tuning_data` (its `jinja2_chat_template`, `role_mapping` and `chat_template_data`), which training
copies to DIR/chat_template.yaml from `data.chat_template_file`. The prompt is the conversation so far plus an assistant
turn whose content is still empty: the template is rendered with a placeholder as that content and cut where the
placeholder starts, so the prompt ends exactly where the data's assistant text began (after the begin marker).
Generation stops at the end marker of `data.loss_mask_tokens`, at the template's end-of-assistant token
(`chat_template_data.special_tokens.e_assistant_token`) or at <|endoftext|>; only the reply is returned.

From Python: `chat(model, tokenizer, recipe, [[{"role": "human", "content": "..."}], ...])` with roles as the data
names them (the keys of role_mapping).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from jaxgpt import rundir
from jaxgpt.data.chat_template import ChatTemplate
from jaxgpt.data.tokenize import EOD_TOKEN
from jaxgpt.errors import ConfigError

_PLACEHOLDER = "\x00jaxgpt-reply\x00"  # no tokenizer text holds NUL bytes: where the reply begins in the rendering


@dataclasses.dataclass(frozen=True)
class ChatRecipe:
    """How conversations are rendered and where replies stop."""

    template: ChatTemplate
    role_mapping: dict  # the data's roles -> the names the template prints
    template_data: dict  # chat_template_data, passed to the template as is
    assistant: str  # the data's role whose turns are the model's (maps to chat_template_data.assistant_role)
    user: str  # the data's role a typed message gets: the first other than the assistant's and "system"
    stop_tokens: tuple[str, ...]  # generation ends at any of these

    @classmethod
    def from_yaml(cls, path: str, loss_mask_tokens: tuple[str, ...] = ()) -> ChatRecipe:
        from jaxgpt.data.prepare.instruction import read_recipe

        template, roles, data = read_recipe(path)
        assistant_name = data.get("assistant_role")
        assistant = next((k for k, v in roles.items() if v == assistant_name), None)
        if assistant is None:
            raise ConfigError(
                f"{path}: chat_template_data.assistant_role={assistant_name!r} is none of role_mapping's names"
                f" {sorted(roles.values())}"
            )
        users = [k for k in roles if k != assistant and k.lower() != "system" and roles[k].lower() != "system"]
        if not users:
            raise ConfigError(f"{path}: role_mapping has no role besides the assistant's and system")
        end_of_reply = (data.get("special_tokens") or {}).get("e_assistant_token")
        stops = (*loss_mask_tokens[1:], *([end_of_reply] if isinstance(end_of_reply, str) else []), EOD_TOKEN)
        return cls(template, roles, data, assistant, users[0], tuple(dict.fromkeys(stops)))

    @property
    def encoding(self):
        """Encode prompts as the data was packed: the template's special tokens split out whole (the packing YAML's
        special_tokens name them; Modalities' tutorial requires it)."""
        from jaxgpt.data.tokenize import Encoding

        named = (self.template_data.get("special_tokens") or {}).values()
        return Encoding(specials=tuple(dict.fromkeys(t for t in (*named, *self.stop_tokens) if isinstance(t, str))))

    def prompt(self, messages: list[dict]) -> str:
        """The conversation rendered up to where the next assistant reply begins."""
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or m.get("role") not in self.role_mapping
                or not isinstance(m.get("content"), str)
            ):
                raise ConfigError(
                    f"message {i} must be {{'role': one of {sorted(self.role_mapping)}, 'content': text}}, got {m!r}"
                )
        turns = [dict(m) for m in messages] + [{"role": self.assistant, "content": _PLACEHOLDER}]
        for turn in turns:
            turn["role"] = self.role_mapping[turn["role"]]
        text = self.template.render("chat", messages=turns, chat_template_data=self.template_data)
        if _PLACEHOLDER not in text:
            raise ConfigError(f"{self.template.where}: the template does not print an assistant turn's content")
        return text[: text.index(_PLACEHOLDER)]


def chat(model, tokenizer, recipe: ChatRecipe, conversations: list[list[dict]], **sampling) -> list[str]:
    """The next assistant reply of each conversation (a list of {"role", "content"} messages, roles as in the data).
    `sampling`: generate_ids' keywords (max_new_tokens, temperature, top_k, top_p, seed, batch_size); greedy by
    default. Without max_new_tokens a reply gets what the longest prompt leaves of the model's context, at most 64
    tokens (a fine-tuned model's context is often short)."""
    from jaxgpt.generate import generate_ids

    stop_ids = []
    for token in recipe.stop_tokens:
        token_id = tokenizer.token_id(token)
        if token_id is not None:
            stop_ids.append(token_id)
    sampling = {"temperature": 0.0, **sampling}
    seq_len, given = model.cfg.seq_len, sampling.get("max_new_tokens")
    prompts = [_encode(tokenizer, recipe, c, seq_len - (given or 1)) for c in conversations]
    if given is None:  # what the longest prompt leaves of the context, at most 64
        sampling["max_new_tokens"] = max(1, min(64, seq_len - max(map(len, prompts))))
    new_ids = generate_ids(model, prompts, eos_id=tuple(stop_ids), vocab_size=tokenizer.max_id + 1, **sampling)
    return [tokenizer.decode([t for t in ids if t not in stop_ids]).strip() for ids in new_ids]


def _encode(tokenizer, recipe: ChatRecipe, conversation: list[dict], room: int | None) -> list[int]:
    """The prompt's ids; a conversation longer than `room` tokens loses its oldest turns first (the last stays)."""
    while True:
        ids = [int(t) for t in tokenizer.encode_batch([recipe.prompt(conversation)])[0]]
        if room is None or len(ids) <= room or len(conversation) == 1:
            return ids
        conversation = conversation[1:]


def find_recipe(workdir: str, given: str | None, loss_mask_tokens: tuple[str, ...]) -> ChatRecipe:
    """The run's chat recipe: --chat_template_file, else the DIR/chat_template.yaml training recorded."""
    path = given or rundir.path(workdir, rundir.CHAT_TEMPLATE)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{workdir}: no {rundir.CHAT_TEMPLATE} (the run had no data.chat_template_file); pass --chat_template_file"
            " with the instruction-tuning YAML the data was prepared with"
        )
    return ChatRecipe.from_yaml(path, loss_mask_tokens)


def run_chat(args, model, tokenizer, recipe: ChatRecipe, prompts: list[str]) -> None:
    """--chat: one reply per prompt, or an interactive conversation on a terminal when no prompt is given."""
    from jaxgpt.generate import sampling_flags

    sampling = sampling_flags(args)
    if prompts:
        conversations = [[{"role": recipe.user, "content": p}] for p in prompts]
        for reply in chat(model, tokenizer, recipe, conversations, **sampling):
            print(reply, flush=True)
        return
    if not sys.stdin.isatty():
        raise ConfigError("--chat without --prompt or --prompts_file needs a terminal")
    conversation: list[dict] = []
    print(f"chat with {args.workdir} (empty line or Ctrl-D ends)", file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        conversation.append({"role": recipe.user, "content": text})
        reply = chat(model, tokenizer, recipe, [conversation], **sampling)[0]
        conversation.append({"role": recipe.assistant, "content": reply})
        print(f"assistant> {reply}", flush=True)
