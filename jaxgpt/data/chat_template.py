"""Chat templates: a Jinja2 template from a data config, rendered in Jinja2's sandbox.

A template is user input that looks like code, so it only ever runs in Jinja2's `ImmutableSandboxedEnvironment`, the
environment HF transformers and Modalities render chat templates in: no attribute starting with `_`, no method that
changes a list or dict, no access to Python's internals. Where Jinja2's sandbox would quietly render an unsafe
attribute as an empty string, here it is an error at once, so a template that reaches for `__class__` is refused
instead of half-rendered.

The environment otherwise is the one chat templates are written for (HF's): `trim_blocks` and `lstrip_blocks`, a
`tojson` filter that keeps non-ASCII text and does not escape HTML, and `raise_exception(message)` for a template to
refuse its input. Modalities writes its templates as YAML block scalars and joins `}\\n{` before compiling (so
one tag per line adds no newline); `compile_template(text, join_lines=True)` does the same.

Imports no jax.
"""

from __future__ import annotations

import functools
import json

from jaxgpt.errors import JaxgptError


class TemplateError(JaxgptError):
    """A chat template that does not compile, reaches outside the sandbox or refuses its input."""


@functools.cache
def _environment():
    from jinja2.exceptions import SecurityError
    from jinja2.exceptions import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

    def raise_exception(message):
        raise JinjaError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


class ChatTemplate:
    """A compiled template; `render(messages, **data)` -> the conversation as text."""

    def __init__(self, text: str, where: str = "chat template", join_lines: bool = False, locate=None):
        """`where` names the template in errors (a file and key); `locate(n)` names line n of the template (e.g. as a
        line of the YAML file holding it)."""
        from jinja2.exceptions import TemplateSyntaxError

        self.text, self.where = text, where
        locate = locate or (lambda n: f"{where}, line {n}")
        try:
            self._template = _environment().from_string(text.replace("}\n{", "}{") if join_lines else text)
        except TemplateSyntaxError as e:
            line = e.lineno
            if join_lines:  # joined lines merge many into one: the text as written tells the line
                try:
                    _environment().parse(text)
                except TemplateSyntaxError as written:
                    line = written.lineno
            raise TemplateError(f"{locate(line)}: template syntax error: {e.message}") from None

    def render(self, context: str = "", **variables) -> str:
        """The rendered text; `context` (e.g. "chat.jsonl:12") names the input in an error."""
        from jinja2.exceptions import TemplateError as JinjaError

        try:
            return self._template.render(**variables)
        except JinjaError as e:
            prefix = f"{context}: " if context else ""
            raise TemplateError(f"{prefix}{self.where} failed: {type(e).__name__}: {e}") from None
