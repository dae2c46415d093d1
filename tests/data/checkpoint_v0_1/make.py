"""How this fixture was made: jaxgpt 0.1.0 at commit bbf2bc8 (before the package became data/ + model/), run once.

    cd <repo at bbf2bc8> && .venv/bin/python tests/data/checkpoint_v0_1/make.py OUT_DIR

It writes OUT_DIR/{train,val}.pbin (GPT-2 tokens of the bundled RedPajama splits modulo 256: a 256-id vocabulary with
real text statistics, 40,000 and 8,000 tokens), trains the config of `fixture.json` uninterrupted to step 8 and records
its losses, then trains it again in OUT_DIR/run, stopped after step 4, and records the logits of that checkpoint on
fixed tokens. This script is kept as it ran; it calls the API of that commit, which has since moved.
Never regenerate the fixture with a newer jaxgpt: it stands for the checkpoints users already have.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)

from jaxgpt import checkpoint, pbin, train  # noqa: E402

OVERRIDES = {
    "model.vocab_size": 256,
    "model.n_embd": 32,
    "model.n_head_q": 4,
    "model.n_head_kv": 2,
    "model.ffn_hidden": 128,
    "data.seq_len": 32,
    "train.num_steps": 8,
    "train.micro_batch_size": 1,
    "train.log_every": 1,
    "train.eval_every": 4,
    "train.eval_steps": 2,
    "checkpoint.every": 4,
    "optim.warmup_steps": 2,
    "wandb.mode": "disabled",
}
TOKENS = np.arange(24, dtype=np.int32).reshape(2, 12) * 7 % 256  # the fixed tokens of `logits.npy`


def write_pbin(src: str, dst: str, num_tokens: int) -> None:
    tokens = (pbin.read_pbin(src).tokens()[:num_tokens].astype(np.int64) % 256).astype("<u2")
    with pbin.atomic_output(dst) as tmp:
        writer = pbin.PbinWriter(tmp, 2)
        writer.write(tokens, np.array([num_tokens]))
        writer.close()


def config(out: str):
    cfg = train.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
    for key, value in OVERRIDES.items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg.data.train_path = os.path.join(out, "train.pbin")
    cfg.data.val_path = os.path.join(out, "val.pbin")
    return cfg


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    write_pbin(os.path.join(REPO, "tests/data/redpajama_v2_samples_512_train.pbin"), f"{out}/train.pbin", 40_000)
    write_pbin(os.path.join(REPO, "tests/data/redpajama_v2_samples_512_test.pbin"), f"{out}/val.pbin", 8_000)
    straight = f"{out}/.straight"
    train.run(config(out), straight)
    with open(f"{straight}/metrics.jsonl") as f:
        events = [json.loads(line) for line in f]
    losses = [(e["event"], e["step"], e.get("loss", e.get("eval_loss"))) for e in events]
    train.run(config(out), f"{out}/run", stop_after=4)
    model, _ = checkpoint.load(f"{out}/run")
    np.save(f"{out}/logits.npy", np.asarray(model(TOKENS)))
    np.save(f"{out}/tokens.npy", TOKENS)
    with open(f"{out}/fixture.json", "w") as f:
        json.dump({"overrides": OVERRIDES, "stopped_after": 4, "uninterrupted_losses": losses}, f, indent=1)


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
