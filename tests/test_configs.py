"""Every shipped config loads by path (as ml_collections' config_flags does), builds, and has the size its file states;
the presets have the shapes (and, through the export mapping, the Hugging Face configs) of the models they name."""

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
from jaxgpt.interop import hf
from jaxgpt.model import GPT, ModelConfig, count_params
from jaxgpt.train.optim import OptimConfig
from jaxgpt.train.state import StepConfig

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
# The published sizes of the models the presets are shaped after, at their own vocabularies (not the files' figures)
PUBLISHED = {
    "gpt2_124m.py": (50257, 124_439_808),  # GPT-2 small
    "gpt2_350m.py": (50257, 354_823_168),  # GPT-2 medium
    "llama_1b.py": (128_256, 1_235_814_400),  # Llama-3.2-1B
}


def _load(path):
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def documented_params(path) -> int:
    """The figure that ends the arithmetic of a config file's parameter count: `= 59,855,872 parameters`."""
    figures = re.findall(r"= ([\d,]+) parameters\b", path.read_text())
    assert len(figures) == 1, f"{path.name}: states its parameter count {len(figures)} times, not once"
    return int(figures[0].replace(",", ""))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_with_documented_size(path):
    cfg = _load(path)
    step = StepConfig.from_config(cfg, num_steps=10)
    model = nnx.eval_shape(lambda: GPT(step.model, rngs=nnx.Rngs(0)))
    actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert actual == count_params(step.model) == documented_params(path)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_at_their_own_vocab_have_the_published_size(name):
    """The shape is the named model's: at its own vocabulary the count is its published one, which the file states."""
    vocab, published = PUBLISHED[name]
    cfg = _load(REPO / "configs" / name)
    cfg.model.vocab_size = vocab
    assert count_params(ModelConfig.from_config(cfg)) == published
    assert f"{published:,}" in (REPO / "configs" / name).read_text()


def test_presets_shapes():
    def shape(name):
        m = ModelConfig.from_config(_load(REPO / "configs" / name))
        return (m.n_layer, m.n_embd, m.n_head_q, m.n_head_kv, m.mlp_hidden, m.mlp, m.norm, m.pos_emb, m.use_bias)

    assert shape("gpt2_124m.py") == (12, 768, 12, 12, 3072, "gelu", "layer", "learned", True)
    assert shape("gpt2_350m.py") == (24, 1024, 16, 16, 4096, "gelu", "layer", "learned", True)
    assert shape("llama_1b.py") == (16, 2048, 32, 8, 8192, "swiglu", "rms", "rope", False)
    llama = ModelConfig.from_config(_load(REPO / "configs" / "llama_1b.py"))
    assert llama.rope_base == 500_000.0 and llama.tie_embeddings and llama.norm_eps == 1e-5


# Where jaxgpt's GPT-2 presets differ from Hugging Face's published `gpt2` and `gpt2-medium` configs, and why
GPT2_DIFFERENCES = {
    "vocab_size": (50304, 50257),  # the padded table; the 47 rows past GPT-2's tokenizer are never sampled
    "activation_function": ("gelu", "gelu_new"),  # jaxgpt's GELU is the exact erf, the original GPT-2's tanh
    "resid_pdrop": (0.0, 0.1),  # model.dropout is 0: an export is for inference
    "embd_pdrop": (0.0, 0.1),
    "attn_pdrop": (0.0, 0.1),
    "pad_token_id": (50256, None),  # the export sets every special id explicitly
    "architectures": (["GPT2LMHeadModel"], None),
    "dtype": ("float32", None),
}


@pytest.mark.parametrize(
    "name, published", [("gpt2_124m.py", {}), ("gpt2_350m.py", {"n_embd": 1024, "n_layer": 24, "n_head": 16})]
)
def test_gpt2_presets_export_with_the_published_configs(name, published):
    """jaxgpt's export mapping turns the preset into GPT2Config(**published) (Hugging Face's `gpt2`, `gpt2-medium`)
    field for field, but for the differences listed above; the class it builds has the preset's parameter count."""
    transformers = pytest.importorskip("transformers")
    m = ModelConfig.from_config(_load(REPO / "configs" / name))
    exported = hf.hf_config(m, bos_id=50256, eos_id=50256, pad_id=50256)
    assert hf.ARCHITECTURES[hf.model_type(m)] == "GPT2LMHeadModel"
    ours = transformers.GPT2Config(**exported).to_dict()
    theirs = transformers.GPT2Config(**published).to_dict()
    assert ours.keys() == theirs.keys()
    assert ours.pop("n_inner") == 4 * theirs["n_embd"] and theirs.pop("n_inner") is None  # None: 4 * n_embd
    assert {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]} == GPT2_DIFFERENCES
    assert _torch_params("GPT2LMHeadModel", transformers.GPT2Config(**exported)) == count_params(m)


def test_llama_preset_exports_to_llama_with_its_size():
    transformers = pytest.importorskip("transformers")
    m = ModelConfig.from_config(_load(REPO / "configs" / "llama_1b.py"))
    exported = hf.hf_config(m, bos_id=50256, eos_id=50256, pad_id=50256)
    assert hf.ARCHITECTURES[hf.model_type(m)] == "LlamaForCausalLM"
    assert _torch_params("LlamaForCausalLM", transformers.LlamaConfig(**exported)) == count_params(m)


def _torch_params(cls: str, hf_config) -> int:
    """The parameters (tied ones once) of a Hugging Face class built on torch's meta device: shapes, no memory."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = getattr(transformers, cls)(hf_config)
    return sum(p.numel() for p in model.parameters())


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
    nested["train"]["log_every"] = 10  # a checkpoint from before train.log_every=None (auto) was the default
    assert config.complete(nested, "ckpt/4").train.log_every == 10
    nested["train"]["log_every"] = None
    assert config.complete(nested, "ckpt/4").train.log_every is None
    nested["model"]["n_layer"] = "two"
    with pytest.raises(ConfigError, match=r"ckpt/4: config key model.n_layer='two' does not fit"):
        config.complete(nested, "ckpt/4")
