"""Text generation with a kv cache: one prefill over the left-padded prompts, then a jitted decode loop.

    python -m jaxgpt.generate --workdir=DIR --prompt="The capital of France" [--max_new_tokens=128] [--temperature=0.8]
    python -m jaxgpt.generate --workdir=DIR --chat [--prompt=...]      # an instruction-tuned run: jaxgpt/chat.py

From Python (a notebook): `generate(model, tokenizer, prompts)` with the model of `checkpoint.load` and the tokenizer of
`jaxgpt.data.tokenize.load_tokenizer`; `generate_ids` works on token ids.

Legend: B rows (prompts x samples), P prompt slots, M new tokens, S cache slots (up to P + M - 1, see
cache_capacities), V vocab.
Row b is left-padded: its real tokens fill slots first_B[b] .. P-1, so every row's next token goes into the same slot
and one decode step serves all rows. Each row's positions (rotary, wpe) count from its own first real slot. Shapes
depend only on (B, P, M): prompt lengths are rounded up to a bucket of PROMPT_BUCKET slots, so nothing recompiles per
token or per prompt length within a bucket.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt import checkpoint, rundir, sharding
from jaxgpt.data.tokenize import EOD_TOKEN, Tokenizer, load_tokenizer
from jaxgpt.errors import ConfigError, check_int
from jaxgpt.io import atomic_output
from jaxgpt.model import GPT
from jaxgpt.model.layers import Linear

PROMPT_BUCKET = 64  # prompt slots are a multiple of this: one compile serves every prompt length up to it
TRANSPOSED_FROM_ROWS = 4  # decode_layout: rows per device from which CPU decoding uses [out, in] kernels
CACHE_STEP = 64  # each decode loop's cache has this many more slots than the one before (see cache_capacities)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a token is drawn from the logits; hashable, so a jitted decode loop compiles once per setting."""

    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0: off
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p; 1.0: off

    def __post_init__(self):
        if not self.temperature >= 0.0:  # also NaN
            raise ConfigError(f"--temperature={self.temperature} must be >= 0 (0 is greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top_p={self.top_p} must be in (0, 1] (1.0 is off)")
        check_int("--top_k", self.top_k, minimum=0, hint=" (0 is off)")


def sample(logits_BxV: jax.Array, keys_B: jax.Array, sampling: Sampling, vocab_limit: int) -> jax.Array:
    """Next ids [B]; ids >= vocab_limit (the padded vocab rows, which no token has) are never drawn."""
    V = logits_BxV.shape[-1]
    logits_BxV = jnp.where(jnp.arange(V) < vocab_limit, logits_BxV.astype(jnp.float32), -jnp.inf)
    if sampling.temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    # from the row's max first: a tiny temperature then sends the others to -inf, not the max to +inf (which would
    # make every token tie and the draw pick id 0)
    logits_BxV = (logits_BxV - jnp.max(logits_BxV, axis=-1, keepdims=True)) / sampling.temperature
    if sampling.top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, min(sampling.top_k, vocab_limit))[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
    if sampling.top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]  # descending
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        # keep a token when the tokens above it hold less than top_p: the most likely one is always kept
        kept_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < sampling.top_p
        cutoff_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV >= cutoff_Bx1, logits_BxV, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys_B, logits_BxV).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh", "sampling", "max_new", "eos_id", "vocab_limit"))
def _decode(graphdef, params, tokens_BxP, first_B, keys_B, num_real, *, mesh, sampling, max_new, eos_id, vocab_limit):
    """(new ids [B, M], -1 after a row's eos; decode steps run): the loop ends once every row has emitted one of the
    eos_id tuple (empty: never) or M tokens. Rows from num_real on are filler (the batch padded to the mesh): done
    from the start, so that they never keep the loop running."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        model = nnx.merge(graphdef, params)
        B, P = tokens_BxP.shape

        def next_ids(h_BxD, i):
            logits_BxV = model.project(h_BxD[:, None])[:, 0]
            return sample(logits_BxV, jax.vmap(jax.random.fold_in, (0, None))(keys_B, i), sampling, vocab_limit)

        def ended(ids_B):
            return jnp.isin(ids_B, jnp.asarray(eos_id, jnp.int32)) if eos_id else jnp.zeros_like(ids_B, dtype=bool)

        capacities = cache_capacities(P, max_new)
        h_BxPxD, cache = model.hidden(tokens_BxP, cache=model.init_cache(first_B, capacities[0]))
        ids_B = next_ids(h_BxPxD[:, -1], 0)
        out_BxM = jnp.full((B, max_new), -1, jnp.int32).at[:, 0].set(ids_B)

        def body(carry):
            i, ids_B, cache, out_BxM, done_B = carry
            h_Bx1xD, cache = model.hidden(ids_B[:, None], cache=cache)  # the token drawn at step i - 1
            ids_B = jnp.where(done_B, -1, next_ids(h_Bx1xD[:, 0], i))
            out_BxM = jax.lax.dynamic_update_slice_in_dim(out_BxM, ids_B[:, None], i, axis=1)
            return i + 1, ids_B, cache, out_BxM, done_B | ended(ids_B)

        def cond(carry, last: int):
            i, *_, done_B = carry
            return (i < last) & ~jnp.all(done_B)

        carry = (jnp.int32(1), ids_B, cache, out_BxM, ended(ids_B) | (jnp.arange(B) >= num_real))
        for capacity in capacities:
            i, ids_B, cache, out_BxM, done_B = carry
            # the step drawing token i writes slot P + i - 1: this loop's steps fill the slots up to capacity - 1
            last = min(max_new, capacity - P + 1)
            carry = (i, ids_B, cache.grow(capacity), out_BxM, done_B)
            carry = jax.lax.while_loop(functools.partial(cond, last=last), body, carry)
        steps, _, _, out_BxM, _ = carry
        return out_BxM, steps


def cache_capacities(P: int, max_new: int) -> list[int]:
    """Cache slots of each decode loop: CACHE_STEP more per loop, up to the P + M - 1 that the last token needs.
    Attention reads every slot of the cache each step, filled or not: a cache with all P + M - 1 slots from the start
    made attention a large part of each CPU decode step (BENCHMARKS.md, "Choices")."""
    full = P + max_new - 1
    return [*range(P + CACHE_STEP, full, CACHE_STEP), full]


def model_mesh(model: GPT) -> jax.sharding.Mesh:
    """The mesh the model's parameters live on (one device for unsharded arrays)."""
    leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
    s = getattr(leaf, "sharding", None)
    if isinstance(s, jax.sharding.NamedSharding):
        return s.mesh
    return sharding.make_mesh(1, 1, 1, devices=list(leaf.devices())[:1])


def check_prompts(prompt_ids: list[list[int]], max_new_tokens: int, seq_len: int) -> None:
    check_int("--max_new_tokens", max_new_tokens)
    if max_new_tokens >= seq_len:
        raise ConfigError(f"--max_new_tokens={max_new_tokens} leaves no room for a prompt: data.seq_len={seq_len}")
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ConfigError(f"prompt {i} is empty")
        if len(ids) > seq_len - max_new_tokens:
            raise ConfigError(
                f"prompt {i} has {len(ids)} tokens; with --max_new_tokens={max_new_tokens} at most "
                f"data.seq_len - max_new_tokens = {seq_len - max_new_tokens} fit"
            )


def generate_ids(
    model: GPT | tuple[nnx.GraphDef, nnx.State],
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    eos_id: int | tuple[int, ...] | None,
    vocab_size: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    sample_ids: list[int] | None = None,
    batch_size: int = 8,
) -> list[list[int]]:
    """New ids per prompt, up to and including the eos_id emitted (one id or several; None: no stop). vocab_size:
    the tokenizer's size; ids from it to the model's padded vocab are never drawn. Row i draws its randomness from
    (seed, sample_ids[i]) alone (default: its index i), never from its batch: how many rows share a batch, and their
    lengths, change nothing. Rows run batch_size at a time on the model's mesh. model: a GPT, or its (graphdef,
    params)."""
    model = nnx.merge(*model) if isinstance(model, tuple) else model
    cfg = model.cfg
    vocab_size = cfg.vocab_size if vocab_size is None else vocab_size
    if vocab_size > cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {vocab_size} ids, more than model.vocab_size={cfg.vocab_size}")
    check_prompts(prompt_ids, max_new_tokens, cfg.seq_len)
    check_int("--batch_size", batch_size)
    sampling = Sampling(float(temperature), top_k, float(top_p))
    sample_ids = list(range(len(prompt_ids))) if sample_ids is None else sample_ids
    mesh = model_mesh(model)
    shards = sharding.data_parallel_size(mesh)
    # B: a power of two up to batch_size (few shapes, few compiles), a multiple of the batch axes' size
    rows = min(batch_size, 1 << (len(prompt_ids) - 1).bit_length())
    rows = math.ceil(rows / shards) * shards
    graphdef, params = nnx.split(decode_layout(model, rows // shards))
    stops = () if eos_id is None else (int(eos_id),) if isinstance(eos_id, (int, np.integer)) else tuple(eos_id)
    static = dict(mesh=mesh, sampling=sampling, max_new=max_new_tokens, eos_id=stops, vocab_limit=vocab_size)
    out = []
    for start in range(0, len(prompt_ids), rows):
        chunk, ids = prompt_ids[start : start + rows], _fill(sample_ids[start:][:rows], rows)
        new_BxM = _decode_rows(graphdef, params, chunk, ids, seed, rows, cfg.seq_len - max_new_tokens, static)
        out.extend(_trim(row) for row in new_BxM[: len(chunk)])
    return out


def decode_layout(model: GPT, rows_per_device: int) -> GPT:
    """The model to decode with: on CPU from TRANSPOSED_FROM_ROWS rows per device, a copy whose Linear kernels are
    stored [out, in] (`Linear.transposed`); otherwise `model`.

    XLA's CPU matmul of a few rows (one token per row while decoding) by a kernel read along its input dim was faster
    from 4 rows on, and slower below (BENCHMARKS.md, "Choices"). The copy holds its own transposed kernels (the Linear
    parameters once more) and leaves `model` as it is."""
    cpu = model_mesh(model).devices.flat[0].platform == "cpu"
    if not cpu or rows_per_device < TRANSPOSED_FROM_ROWS:
        return model
    copy = nnx.merge(*nnx.split(model))  # new modules over the same arrays
    for _, module in nnx.iter_graph(copy):
        if isinstance(module, Linear) and not module.transposed:
            module.kernel = nnx.Param(_transpose(module.kernel[...]))
            module.transposed = True
    return copy


@jax.jit
def _transpose(kernel_IxO: jax.Array) -> jax.Array:
    # a jit of its own: its output is a new [O, I] array in row-major order, which is the point
    return kernel_IxO.T


def _decode_rows(graphdef, params, chunk, sample_ids, seed, rows, max_slots, static) -> np.ndarray:
    """One batch of `rows` rows (the chunk's prompts, then filler rows): new ids [B, M] on the host."""
    mesh = static["mesh"]
    pad_id = static["eos_id"][0] if static["eos_id"] else 0
    tokens_BxP, first_B = _left_pad(chunk, rows, pad_id=pad_id, max_slots=max_slots)
    keys_B = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), np.asarray(sample_ids))
    tokens_BxP = jax.device_put(tokens_BxP, sharding.batch_sharding(mesh))
    first_B = jax.device_put(first_B, jax.sharding.NamedSharding(mesh, sharding.logical_spec("batch")))
    new_BxM, _ = _decode(graphdef, params, tokens_BxP, first_B, keys_B, jnp.int32(len(chunk)), **static)
    return np.asarray(jax.device_get(new_BxM))


def _left_pad(chunk: list[list[int]], rows: int, pad_id: int, max_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens [B, P] with each prompt right-aligned, and first_B, the slot of each row's first real token.
    P: the longest prompt rounded up to PROMPT_BUCKET, at most max_slots = seq_len - M, the longest prompt that fits
    (the prefill may not exceed seq_len)."""
    P = min(math.ceil(max(len(ids) for ids in chunk) / PROMPT_BUCKET) * PROMPT_BUCKET, max_slots)
    tokens_BxP = np.full((rows, P), pad_id, np.int32)
    first_B = np.full(rows, P - 1, np.int32)  # a filler row holds one pad token
    for b, ids in enumerate(chunk):
        tokens_BxP[b, P - len(ids) :] = ids
        first_B[b] = P - len(ids)
    return tokens_BxP, first_B


def _fill(values: list[int], rows: int) -> list[int]:
    return list(values) + [0] * (rows - len(values))


def _trim(row: np.ndarray) -> list[int]:
    """A row's ids up to the first -1 (the loop stopped or the row had ended)."""
    ended = np.flatnonzero(row < 0)
    return [int(i) for i in (row if ended.size == 0 else row[: ended[0]])]


def reforward_ids(model: GPT, prompt_ids: list[list[int]], *, max_new_tokens: int, vocab_size: int | None = None):
    """Greedy ids without a cache: a full forward over the whole sequence for every new token (Modalities' way).

    The reference that the cached path is tested against, and the baseline of bench/generate.py. Rows are
    right-padded to one static length, which causal attention makes harmless; eos does not stop it."""
    cfg = model.cfg
    check_prompts(prompt_ids, max_new_tokens, cfg.seq_len)
    vocab_size = cfg.vocab_size if vocab_size is None else vocab_size
    lengths_B = np.asarray([len(ids) for ids in prompt_ids], np.int32)
    L = int(lengths_B.max()) + max_new_tokens
    tokens_BxL = np.zeros((len(prompt_ids), L), np.int32)
    for b, ids in enumerate(prompt_ids):
        tokens_BxL[b, : len(ids)] = ids
    graphdef, params = nnx.split(model)
    tokens_BxL, lengths_B = jnp.asarray(tokens_BxL), jnp.asarray(lengths_B)
    for i in range(max_new_tokens):
        tokens_BxL = _reforward_step(graphdef, params, tokens_BxL, lengths_B + i, vocab_limit=vocab_size)
    tokens_BxL = np.asarray(tokens_BxL)
    return [[int(t) for t in tokens_BxL[b, n : n + max_new_tokens]] for b, n in enumerate(np.asarray(lengths_B))]


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab_limit"))
def _reforward_step(graphdef, params, tokens_BxL, next_B, *, vocab_limit):
    """Writes the greedy token for slot next_B[b] of each row, from a forward over all L slots."""
    model = nnx.merge(graphdef, params)
    h_BxLxD = model.hidden(tokens_BxL)
    h_BxD = jnp.take_along_axis(h_BxLxD, (next_B - 1)[:, None, None], axis=1)[:, 0]
    ids_B = sample(model.project(h_BxD[:, None])[:, 0], None, Sampling(), vocab_limit)
    return tokens_BxL.at[jnp.arange(tokens_BxL.shape[0]), next_B].set(ids_B)


@dataclasses.dataclass(frozen=True)
class Completion:
    prompt: str
    sample: int
    completion: str  # the decoded new tokens, eos excluded
    completion_ids: list[int]  # the new tokens, up to and including eos if one was emitted


def generate(
    model: GPT | tuple[nnx.GraphDef, nnx.State],
    tokenizer: Tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    num_samples: int = 1,
    batch_size: int = 8,
) -> list[Completion]:
    """Completions of each prompt, num_samples each (prompt-major: row i * num_samples + s draws with sample id of
    that row index), stopping at <|endoftext|>."""
    check_int("--num_samples", num_samples)
    for i, p in enumerate(prompts):
        if not p:
            raise ConfigError(f"prompt {i} is empty")
    eos_id = tokenizer.token_id(EOD_TOKEN)
    encoded = [[int(t) for t in ids] for ids in tokenizer.encode_batch(list(prompts))]
    rows = [(p, s, ids) for p, ids in zip(prompts, encoded) for s in range(num_samples)]
    new_ids = generate_ids(
        model,
        [ids for _, _, ids in rows],
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        vocab_size=tokenizer.max_id + 1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    text_ids = [ids[:-1] if ids and ids[-1] == eos_id else ids for ids in new_ids]
    return [Completion(p, s, tokenizer.decode(t), ids) for (p, s, _), t, ids in zip(rows, text_ids, new_ids)]


def _run_chat(args: argparse.Namespace, mesh) -> None:
    """--chat (jaxgpt/chat.py): the run's chat template and markers, replies only."""
    from jaxgpt import chat

    prompts = read_prompts(args, required=False)
    model, config = checkpoint.load(args.workdir, args.step, mesh)
    recipe = chat.find_recipe(args.workdir, args.chat_template_file, tuple(config.data.get("loss_mask_tokens", ())))
    tokenizer = load_tokenizer(
        rundir.find_tokenizer(args.workdir, args.tokenizer_file, config), encoding=recipe.encoding
    )
    chat.run_chat(args, model, tokenizer, recipe, prompts)


def sampling_flags(args: argparse.Namespace) -> dict:
    """generate_ids' sampling keywords from the command's flags (plain and --chat alike); a flag left at None takes
    the function's default."""
    keys = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "batch_size")
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


def read_prompts(args: argparse.Namespace, required: bool = True) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts += f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--prompts_file={args.prompts_file}: cannot be read ({e})") from None
    if not prompts and required:
        raise ConfigError("no prompt: pass --prompt=TEXT (repeatable) or --prompts_file=F")
    return prompts


def run_command(args: argparse.Namespace) -> None:
    """`jaxgpt generate` (jaxgpt/cli.py parses the flags): completions printed, and written as JSONL if asked."""
    prompts = [] if args.chat else read_prompts(args)
    Sampling(args.temperature, args.top_k, args.top_p)  # bad flags fail before the checkpoint is read
    mesh = sharding.mesh_flag(args.mesh)
    checkpoint.quiet_orbax_errors()
    if args.chat:
        return _run_chat(args, mesh)
    model, _ = checkpoint.load(args.workdir, args.step, mesh)
    tokenizer = load_tokenizer(rundir.find_tokenizer(args.workdir, args.tokenizer_file))
    completions = generate(
        model,
        tokenizer,
        prompts,
        num_samples=args.num_samples,
        **sampling_flags(args),
    )
    for c in completions:
        print(f"--- prompt {c.prompt!r}, sample {c.sample}\n{c.prompt}{c.completion}", flush=True)
    if args.output_jsonl:
        with atomic_output(args.output_jsonl) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for c in completions:
                f.write(json.dumps(dataclasses.asdict(c), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    from jaxgpt.cli import run_as

    run_as("generate", prog="python -m jaxgpt.generate")
