"""Export to Modalities 0.5.0: GPT2LLM built from model_config.yaml loads model.bin strictly with jaxgpt's logits, and
`modalities generate_text` runs on the folder and prints jaxgpt's greedy continuation.

Runs Modalities through its own venv (.bench_cache/modalities-venv), as tests/test_model.py does; skipped without it.
"""

import dataclasses
import subprocess
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MODALITIES_PYTHON, TOKENIZER, assert_close, model_with, needs_modalities, random_params
from flax import nnx

from jaxgpt.errors import ExportError
from jaxgpt.interop import modalities as modalities_export
from jaxgpt.model import ModelConfig

MODALITIES = MODALITIES_PYTHON.parent
pytestmark = needs_modalities

# Modalities wants n_embd, ffn_hidden and the vocab in multiples of 128
BASE = ModelConfig(
    vocab_size=256, n_layer=2, n_head_q=4, n_head_kv=2, n_embd=128, ffn_hidden=256, init_std=0.1, seq_len=32
)  # the rest: ModelConfig's defaults
CASES = {
    "rope_swiglu_gqa_tied": {},
    "learned_gelu_bias_untied": dict(pos_emb="learned", mlp="gelu", use_bias=True, tie_embeddings=False, n_head_kv=4),
    "rms_qknorm_nopos": dict(norm="rms", qk_norm=True, pos_emb="none"),
    "layer_no_bias_qknorm_rope": dict(norm="layer_no_bias", qk_norm=True, tie_embeddings=False),
}

# Run once by the Modalities venv's python, for every exported folder: GPT2LLM from model_config.yaml through
# Modalities' component factory, model.bin loaded strictly (every key, buffers included, and nothing else), the logits
# of tokens.npy saved; then generate_text (what `modalities generate_text` calls) on the folder named last.
LOAD_AND_RUN = textwrap.dedent("""
    import contextlib, pathlib, sys
    import numpy as np, torch, yaml
    from pydantic import BaseModel
    from modalities.api import generate_text
    from modalities.config.component_factory import ComponentFactory
    from modalities.config.pydantic_if_types import PydanticPytorchModuleType
    from modalities.registry.components import COMPONENTS
    from modalities.registry.registry import Registry

    class Components(BaseModel):
        model: PydanticPytorchModuleType

    *folders, generate = sys.argv[1:]
    for folder in folders:
        with open(f"{folder}/model_config.yaml") as f:
            config = yaml.safe_load(f)
        model = ComponentFactory(Registry(COMPONENTS)).build_components(config, Components).model.eval()
        model.load_state_dict(torch.load(f"{folder}/model.bin"), strict=True)
        with torch.no_grad():
            logits = model({"input_ids": torch.from_numpy(np.load(f"{folder}/../tokens.npy")).long()})["logits"]
        np.save(f"{folder}/../logits.npy", logits.float().numpy())
    with open(f"{generate}/../generated.txt", "w") as f, contextlib.redirect_stdout(f):
        generate_text(pathlib.Path(generate) / "text_generation.yaml")
""")
PROMPT = "w1 w2 w3"


def _tokenizer(directory):
    """Word-level: "w0".."w254" and <|endoftext|> (255), so decoded text shows each id."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(255)} | {"<|endoftext|>": 255}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(directory / "tokenizer.json"))
    return tok


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{case: (cfg, flat params, tokens, folder)}, each folder exported and run through Modalities (LOAD_AND_RUN)."""
    root = tmp_path_factory.mktemp("modalities")
    tok = _tokenizer(root)
    cases = {name: dataclasses.replace(BASE, **options) for name, options in CASES.items()}
    cases["generate"] = dataclasses.replace(BASE, seq_len=16)
    out = {}
    for seed, (name, cfg) in enumerate(sorted(cases.items())):
        flat = random_params(cfg, seed)
        folder = root / name / "out"
        written = root / name / "written"  # then moved: generate_text runs where the folder lies, not where written
        modalities_export.write_folder(
            str(written), flat, cfg, tokenizer_file=str(root / "tokenizer.json"), prompt=PROMPT
        )
        written.rename(folder)
        tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, cfg.seq_len)).astype(np.int32)
        np.save(root / name / "tokens.npy", tokens)
        out[name] = (cfg, flat, tokens, folder)
    (root / "load.py").write_text(LOAD_AND_RUN)
    args = [str(root / "load.py"), *(str(f) for *_, f in out.values()), str(out["generate"][3])]
    done = subprocess.run(
        [str(MODALITIES / "python"), *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, tok


@pytest.mark.parametrize("name", sorted(CASES))
def test_gpt2llm_from_model_config_loads_model_bin_strictly_with_equal_logits(name, exported):
    cfg, flat, tokens, folder = exported[0][name]
    want = np.asarray(nnx.jit(lambda m, t: m(t))(model_with(cfg, flat), jnp.asarray(tokens)))
    got = np.load(folder.parent / "logits.npy")
    assert_close(got, want, depth=cfg.mlp_hidden)  # torch sums in its own order
    assert np.abs(want).max() > 0.5


def test_generate_text_runs_and_continues_as_jaxgpt_greedily(exported):
    (cfg, flat, _, folder), tok = exported[0]["generate"], exported[1]
    printed = (folder.parent / "generated.txt").read_text()
    # jaxgpt's greedy continuation, by full forwards, up to generate_text's length (seq_len tokens in all) or eod
    model, ids = model_with(cfg, flat), tok.encode(PROMPT).ids
    forward = nnx.jit(lambda m, t: m(t))
    new = []
    while len(ids) < cfg.seq_len:
        # one shape, one compile: causal, so the zeros after the last id change nothing before it
        padded_1xT = jnp.asarray([ids + [0] * (cfg.seq_len - len(ids))])
        nxt = int(np.argmax(np.asarray(forward(model, padded_1xT))[0, len(ids) - 1]))
        if nxt == 255:
            break
        new.append(nxt)
        ids.append(nxt)
    assert new and tok.decode(new) in printed, (tok.decode(new), printed[-2000:])


def test_the_generate_text_cli_takes_the_folder(exported):
    """text_generation.yaml is what `modalities generate_text --config_file_path` reads (the CLI run above in-process,
    its click wrapper here would cost another 10 s start): its paths point into its own folder, wherever that is."""
    import yaml

    folder = exported[0]["generate"][3]
    config = yaml.safe_load((folder / "text_generation.yaml").read_text())
    assert config["settings"]["model_path"] == "${modalities_env:config_folder_path}/model.bin"
    assert config["tokenizer"]["config"]["pretrained_model_name_or_path"] == "${modalities_env:config_folder_path}/"
    assert str(folder.parent) not in (folder / "text_generation.yaml").read_text()
    assert config["model"] == yaml.safe_load((folder / "model_config.yaml").read_text())["model"]


def test_options_modalities_cannot_hold_are_refused_by_name(tmp_path):
    cfg = dataclasses.replace(BASE, n_embd=96, n_head_q=4)
    with pytest.raises(ExportError, match=r"multiples of 128, so model\.n_embd=96 cannot export"):
        modalities_export.write_folder(str(tmp_path / "out"), {}, cfg, tokenizer_file=str(TOKENIZER))
    assert not (tmp_path / "out").exists()
