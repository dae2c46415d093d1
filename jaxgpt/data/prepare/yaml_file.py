"""Modalities' data YAML files, read as Modalities reads them: OmegaConf, interpolations such as
`${settings.sequence_length}` resolved, then plain dicts. Errors name the file, the line and the key.

OmegaConf parses with a safe YAML loader and resolves only the interpolations it knows (`${a.b}` and its own `oc.*`
resolvers); nothing in the file runs as code. Modalities registers three resolvers of its own for training configs
(`modalities_env`, `cuda_env`, `node_env`); they have no meaning for data preparation and get a clear error.

Imports no jax.
"""

from __future__ import annotations

import functools
import os

from jaxgpt.errors import PackedDataError

MODALITIES_RESOLVERS = ("modalities_env", "cuda_env", "node_env")


class YamlFile:
    """A resolved YAML mapping and where its keys are written: `where("settings.src_path")` -> "F.yaml:3"."""

    def __init__(self, path: str | os.PathLike, text: str, data: dict):
        self.path, self.text, self.data = os.fspath(path), text, data

    @functools.cached_property
    def _lines(self) -> dict[str, int]:
        """Dotted key -> 1-based line of every mapping key in the file (list items as key.N)."""
        import yaml

        lines: dict[str, int] = {}

        def walk(node, prefix: str) -> None:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    name = f"{prefix}{k.value}"
                    lines[name] = k.start_mark.line + 1
                    walk(v, name + ".")
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    lines[f"{prefix}{i}"] = v.start_mark.line + 1
                    walk(v, f"{prefix}{i}.")

        walk(yaml.compose(self.text, Loader=yaml.SafeLoader), "")
        return lines

    def line(self, key: str) -> int | None:
        """The line `key` is written on, or that of its nearest written parent; None when no part is written."""
        parts = key.split(".")
        while parts:
            if (found := self._lines.get(".".join(parts))) is not None:
                return found
            parts.pop()
        return None

    def where(self, key: str) -> str:
        """ "F.yaml:LINE: key" for an error about `key`."""
        line = self.line(key)
        return f"{self.path}:{line}: {key}" if line is not None else f"{self.path}: {key}"

    def get(self, key: str, default=None):
        value = self.data
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def mapping(self, key: str) -> dict:
        value = self.get(key)
        if not isinstance(value, dict):
            raise PackedDataError(f"{self.where(key)} must be a mapping, got {value!r}")
        return value


def read_yaml(path: str | os.PathLike) -> YamlFile:
    """The file, parsed and resolved as Modalities' load_app_config_dict does (without its own resolvers)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException, UnsupportedInterpolationType

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PackedDataError(f"{path}: no such config file") from None
    except UnicodeDecodeError as e:
        raise PackedDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        config = OmegaConf.create(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise PackedDataError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except OmegaConfBaseException as e:
        raise PackedDataError(f"{path}: {str(e).splitlines()[0]}") from None
    if not OmegaConf.is_dict(config):
        raise PackedDataError(f"{path}: expected a mapping of sections, got a {type(config).__name__}")
    blank = YamlFile(path, text, {})
    try:
        data = OmegaConf.to_container(config, resolve=True)
    except UnsupportedInterpolationType as e:
        name = str(e).splitlines()[0].split()[-1]
        why = " (a resolver of Modalities' training configs)" if name in MODALITIES_RESOLVERS else ""
        raise PackedDataError(
            f"{blank.where(e.full_key)}: interpolation resolver {name!r} is not supported{why}"
        ) from None
    except OmegaConfBaseException as e:
        raise PackedDataError(f"{blank.where(e.full_key)}: {str(e).splitlines()[0]}") from None
    return YamlFile(path, text, data)
