"""What a config section is: a frozen dataclass whose fields are its knobs, each with a literal default and a comment.

    @dataclasses.dataclass(frozen=True)
    class WandbConfig(Section):
        SECTION = "wandb"
        mode: str = knob("offline", resumable=True)  # "offline" (files under the workdir) | "online" | "disabled"

jaxgpt/config.py builds the ConfigDict that `--config.wandb.mode=online` overrides from these defaults, so a knob
added later, with a default that keeps the old behaviour, never breaks a config file or a checkpoint that predates
it. `knob(..., resumable=True)` marks a knob that a resume may change; every other must match the checkpoint's.

This module imports only the standard library, so that every section can be declared where it is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxgpt.errors import ConfigError


def knob(default: Any, *, resumable: bool = False, key: str | None = None) -> Any:
    """A field with its default. resumable: a resume may change it, because it decides what is logged or evaluated,
    when and where, or how the same arrays are laid out, never the numbers the run computes. key: the knob's config
    key when another section holds it (ModelConfig.seq_len reads data.seq_len)."""
    return dataclasses.field(default=default, metadata={"resumable": resumable, "key": key})


class Section:
    """Base of the config sections: `SECTION` names the ConfigDict section the fields are read from."""

    SECTION: ClassVar[str]

    @classmethod
    def knob_key(cls, field: dataclasses.Field) -> str:
        """The config key a field reads: "model.n_layer", or the key its knob names."""
        return field.metadata.get("key") or f"{cls.SECTION}.{field.name}"

    @classmethod
    def own_fields(cls) -> list[dataclasses.Field]:
        """The fields that are knobs of this section (not read from another one)."""
        return [f for f in dataclasses.fields(cls) if not f.metadata.get("key")]

    @classmethod
    def from_config(cls, cfg):
        """From the root config (a ConfigDict or a nested dict): a key of the section that no field reads is an error
        naming it; a knob the config lacks takes its default."""
        given = dict(cfg[cls.SECTION])
        own = {f.name for f in cls.own_fields()}
        unknown = sorted(set(given) - own)
        if unknown:
            keys = [f"{cls.SECTION}.{k}" for k in unknown]
            raise ConfigError(f"unknown {cls.SECTION} option(s) {keys}; known: {sorted(own)}")
        values = dict(given)
        for f in dataclasses.fields(cls):
            if f.name not in own:  # a knob of another section
                section, name = cls.knob_key(f).split(".")
                if name in cfg.get(section, {}):
                    values[f.name] = cfg[section][name]
        return cls(**values)
