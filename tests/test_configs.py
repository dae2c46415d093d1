"""Every shipped config loads by path (as ml_collections' config_flags does), builds, and has its documented size."""

import dataclasses
import importlib.util
import inspect
import re
import subprocess
import sys

import jax
import pytest
from conftest import REPO
from flax import nnx

from jaxgpt import config
from jaxgpt.errors import ConfigError
from jaxgpt.model import GPT, ModelConfig, count_params
from jaxgpt.train.optim import OptimConfig
from jaxgpt.train.state import StepConfig

CONFIGS = sorted((REPO / "configs").glob("*.py"))
PARAMS = {"gpt60m.py": 59_855_872, "tiny.py": 3_342_976}


def _load(path):
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_every_config_is_listed():
    assert {p.name for p in CONFIGS if p.name != "__init__.py"} == set(PARAMS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_with_documented_size(path):
    cfg = _load(path)
    step = StepConfig.from_config(cfg, num_steps=10)
    model = nnx.eval_shape(lambda: GPT(step.model, rngs=nnx.Rngs(0)))
    actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert actual == count_params(step.model) == PARAMS[path.name]


def test_gpt60m_matches_the_getting_started_model():
    m = ModelConfig.from_config(_load(REPO / "configs" / "gpt60m.py"))
    assert (m.n_embd, m.n_layer, m.n_head_q, m.n_head_kv, m.mlp_hidden, m.seq_len) == (512, 10, 8, 8, 1536, 512)
    assert (m.pos_emb, m.norm, m.norm_eps, m.use_bias, m.tie_embeddings, m.vocab_size) == (
        "rope",
        "layer",
        1e-5,
        False,
        True,
        50304,
    )


def test_configs_load_through_config_flags_from_another_directory(tmp_path):
    """config_flags imports the file by path with the repo off sys.path: the defaults come from the installed jaxgpt."""
    script = (
        "import sys\n"
        "from absl import app, flags\n"
        "from ml_collections import config_flags\n"
        "_CONFIG = config_flags.DEFINE_config_file('config')\n"
        "def main(_):\n"
        "    print(_CONFIG.value.model.n_layer, _CONFIG.value.train.grad_accum)\n"
        "app.run(main)\n"
    )
    for name, expected in (("gpt60m.py", "10 3"), ("tiny.py", "2 3")):
        path = REPO / "configs" / name
        out = subprocess.run(
            [sys.executable, "-c", script, f"--config={path}", "--config.train.grad_accum=3"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONSAFEPATH": "1", "PATH": ""},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == expected.split()


def test_unknown_model_key_is_named():
    cfg = _load(REPO / "configs" / "tiny.py")
    cfg.model.n_heads = 4  # a typo'd knob must not be silently ignored
    with pytest.raises(ConfigError, match="model.n_heads"):
        ModelConfig.from_config(cfg)


def test_every_knob_has_a_default_and_one_comment_where_it_is_declared():
    """Each section's dataclass is the one list of its knobs: every field has a default and a comment at the end of
    its line, or (too long for one line) on the line above; the ConfigDict holds exactly these knobs."""
    for section in config.SECTIONS:
        lines, first = inspect.getsourcelines(section)
        fields = {f.name for f in dataclasses.fields(section)}
        declared = [i for i, line in enumerate(lines) if re.match(rf"    ({'|'.join(fields)}): ", line)]
        assert len(declared) == len(fields), section.__name__
        for i in declared:
            code, _, comment = lines[i].partition("  # ")
            where = f"{inspect.getsourcefile(section)}:{first + i}: {code.strip()}"
            assert " = " in code, where
            assert comment.strip() or lines[i - 1].strip().startswith("# "), where
    knobs = {s.knob_key(f) for s in config.SECTIONS for f in s.own_fields()}
    assert knobs == set(config.flatten(config.default_config().to_dict()))


def test_dataclass_defaults_are_the_config_defaults():
    base = config.default_config()
    assert ModelConfig() == ModelConfig.from_config(base)  # data.seq_len included
    assert OptimConfig() == OptimConfig.from_config(base)
    step = StepConfig(ModelConfig(), OptimConfig(), num_steps=10)
    assert step == StepConfig.from_config(base, num_steps=10)
    assert config.RunConfig.from_config(base) == config.RunConfig(*(s() for s in config.SECTIONS))


def test_config_files_change_only_what_differs_from_the_defaults():
    defaults = config.flatten(config.default_config().to_dict())
    for path in CONFIGS:
        for line in path.read_text().splitlines():
            assigned = re.match(r"    c\.(\w+\.\w+) = ", line)
            if assigned:
                value = config.flatten(_load(path).to_dict())[assigned[1]]
                assert value != defaults[assigned[1]], f"{path.name}: {line.strip()} is the default"


def test_a_config_without_a_knob_builds_with_its_default():
    cfg = _load(REPO / "configs" / "tiny.py")
    with cfg.unlocked():
        del cfg.model["qk_norm"]
        del cfg.optim["eps"]
    assert ModelConfig.from_config(cfg).qk_norm is False and OptimConfig.from_config(cfg).eps == 1e-8


def test_resumable_keys_are_knobs_and_leave_the_numbers_alone():
    keys = config.resumable()
    assert keys <= set(config.flatten(config.default_config().to_dict()))
    # none of the sections that decide what the step computes may change on resume
    assert not {k for k in keys if k.split(".")[0] in ("model", "optim")}
    assert {"data.seed", "train.grad_accum", "train.compute_dtype", "train.z_loss", "train.num_steps"}.isdisjoint(keys)


def test_completing_a_saved_config():
    saved = config.flatten(_load(REPO / "configs" / "tiny.py").to_dict())
    nested = {}
    for key, value in saved.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    del nested["model"]["attn"]  # a checkpoint from before the knob
    assert config.complete(nested, "ckpt/4").model.attn == "causal"
    nested["model"]["n_layer"] = "two"
    with pytest.raises(ConfigError, match=r"ckpt/4: config key model.n_layer='two' does not fit"):
        config.complete(nested, "ckpt/4")
