"""configs/base.py is the one declaration of every knob; this module derives the rest from it.

- The frozen dataclasses (ModelConfig, OptimConfig, StepConfig) take their field defaults from base.py
  (`knob_defaults`), so a knob added later, with a default that keeps the old behaviour, never breaks a config or a
  checkpoint that predates it.
- `complete` reads a checkpoint's saved config as base.py's knobs overlaid with what was saved: a missing key means
  the checkpoint predates that knob and holds its default; a key base.py does not know is a newer jaxgpt's, refused.
- `RESUMABLE` (declared in base.py next to the knobs) is the set of keys a resume may change.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib

import ml_collections

_HERE = pathlib.Path(__file__).resolve().parent
# configs/base.py of the checkout jaxgpt runs from; an installed wheel carries the same file as jaxgpt/configs/base.py.
BASE = next((p for p in (_HERE.parent / "configs" / "base.py", _HERE / "configs" / "base.py") if p.is_file()), None)


@functools.cache
def _base_module():
    if BASE is None:
        raise FileNotFoundError(
            f"neither {_HERE.parent}/configs/base.py nor {_HERE}/configs/base.py exists: jaxgpt reads"
            " its knobs and their defaults there"
        )
    return load_module(BASE)


def load_module(path: str | os.PathLike):
    """Imports a config file by path, as `--config=path` does."""
    spec = importlib.util.spec_from_file_location(f"_jaxgpt_config_{pathlib.Path(path).stem}", os.fspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Calls `get_config()` of a config file, as `--config=path` does (for tests and notebooks)."""
    return load_module(path).get_config()


def base_config() -> ml_collections.ConfigDict:
    """A fresh copy of configs/base.py's config: every knob at its default."""
    return _base_module().get_config()


def resumable() -> frozenset[str]:
    """The keys a resume may change (configs/base.py's RESUMABLE)."""
    keys = frozenset(_base_module().RESUMABLE)
    unknown = sorted(keys - set(flatten(base_config().to_dict())))
    if unknown:
        raise ValueError(f"{BASE}: RESUMABLE names {unknown}, which are not knobs of get_config()")
    return keys


def knob_defaults(section: str, *, skip: tuple[str, ...] = (), **elsewhere: str):
    """Class decorator (under @dataclass): every annotated field but those in `skip` gets its knob's default from
    base.py, the knob `section.<field>`, or for a field named in `elsewhere` the knob given there
    (`seq_len="data.seq_len"`)."""

    def decorate(cls):
        defaults = flatten(base_config().to_dict())
        for name in cls.__annotations__:
            if name in skip:
                continue
            key = elsewhere.get(name, f"{section}.{name}")
            if key not in defaults:
                raise KeyError(f"{cls.__name__}.{name}: configs/base.py has no knob {key!r} to take its default from")
            setattr(cls, name, defaults[key])
        return cls

    return decorate


def from_section(cls, cfg: ml_collections.ConfigDict, section: str, **extra):
    """cls(**cfg[section], **extra): a key that cls has no field for is an error naming it; a missing key takes its
    default."""
    fields = {f.name for f in dataclasses.fields(cls)} - set(extra)
    given = dict(cfg[section])
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"unknown {section} option(s) {[f'{section}.{k}' for k in unknown]}; known: {sorted(fields)}")
    return cls(**given, **extra)


def complete(saved: dict, where: str) -> ml_collections.ConfigDict:
    """A saved config (a checkpoint's) with every knob it predates at base.py's default; refuses knobs of a newer
    jaxgpt, naming them and `where` the config came from."""
    cfg = base_config()
    known = flatten(cfg.to_dict())
    unknown = sorted(set(flatten(saved)) - set(known))
    if unknown:
        raise ValueError(
            f"{where}: holds config key(s) {unknown} that this jaxgpt does not know: knobs of a newer jaxgpt (upgrade"
            " to read it) or misspelt keys"
        )
    with cfg.unlocked():
        for key, value in flatten(saved).items():
            section, name = key.rsplit(".", 1)
            node = cfg
            for part in section.split("."):
                node = node[part]
            try:
                node[name] = value
            except TypeError as e:  # ConfigDict refuses a value of another type than the knob's
                raise ValueError(f"{where}: config key {key}={value!r} does not fit this jaxgpt's knob ({e})") from None
    return cfg


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"z_loss": 0.0}} -> {"train.z_loss": 0.0}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
