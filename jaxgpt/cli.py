"""The `jaxgpt` command: one entry for training, generation, export, plots and the data tools.

    jaxgpt train --config=configs/gpt60m.py --workdir=DIR [--config.key=value ...]   (= python -m jaxgpt.train)
    jaxgpt plan --config=configs/gpt60m.py --devices=8 --device=h100                   (= python -m jaxgpt.plan)
    jaxgpt generate --workdir=DIR --prompt=TEXT [...]                                 (= python -m jaxgpt.generate)
    jaxgpt export hf|modalities --workdir=DIR --out=OUT [...]                         (= tools/export_*.py)
    jaxgpt eval --workdir=DIR --task=NAME:KIND:PATH [...]   /   jaxgpt eval convert hellaswag IN OUT   (jaxgpt/evals)
    jaxgpt plot DIR [DIR ...] [--out F.png] [--layers]                                (= tools/plot_metrics.py)
    jaxgpt create_memmap_index IN.jsonl / create_packed_data ... IN.jsonl / inspect_pbin F.pbin   (= tools/*.py)
    jaxgpt data NAME ...   Modalities 0.5.0's data commands under their own names and flags

`jaxgpt data NAME` takes the names, positional arguments and flags of `modalities data NAME --help`, so a Modalities
preprocessing script runs with `modalities` replaced by `jaxgpt`; so do the getting-started tutorial's two commands
with `jaxgpt create_memmap_index` and `jaxgpt create_packed_data`. Each command imports only its own module: the data
commands never import jax.

`clean_errors` is the edge of every command: a jaxgpt error (the user's input) ends in one line, `error: <message>`,
with status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

from jaxgpt.data.commands import add_data_commands, add_policy_flag
from jaxgpt.errors import JaxgptError, MetricsError, PackedDataError

# The edge
# ------------------------------------------------------------------------------------------------------------------


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # the exit status the default action would give (143)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM's default action ends the process at once, skipping every cleanup: make it raise SystemExit instead, so
    that atomic outputs are removed and worker pools stopped. The training loop replaces this with a stop at the next
    step while it runs. Only the main thread can set a signal handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


@contextlib.contextmanager
def clean_errors(*also: type[BaseException]) -> Iterator[None]:
    """A JaxgptError (and the `also` types: OSError for a command that writes outputs) exits with `error: <message>`
    and status 1; Ctrl-C with status 130; SIGTERM with 143 after the cleanups. Every other exception propagates."""
    try:
        with sigterm_exits():
            yield
    except (JaxgptError, *also) as e:
        raise SystemExit(f"error: {_one_line(e)}") from None
    except KeyboardInterrupt:
        print("interrupted; no output was left behind", file=sys.stderr)
        raise SystemExit(130) from None


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e).replace("\n", "\\n")


# Commands: each adds its flags to a parser and runs on the parsed namespace, importing its module only then
# ------------------------------------------------------------------------------------------------------------------


def _create_memmap_index_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("src_path", help="the JSONL file to index")
    p.add_argument("--index_path", default=None, help="output .idx (default: next to the input, same stem)")
    add_policy_flag(p)


def _create_memmap_index(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.index import create_index

    return create_index(a.src_path, a.index_path, a.file_existence_policy)


def _create_packed_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("src_path", help="the JSONL file")
    p.add_argument("--jq_pattern", required=True, help="jq expression selecting each line's text, e.g. .raw_content")
    p.add_argument("--tokenizer_file", required=True, help="a HF tokenizer.json")
    p.add_argument("--index_path", default=None, help="the JSONL's .idx (default: next to it, same stem)")
    p.add_argument("--dst_path", default=None, help="output .pbin (default: next to the input, same stem)")
    p.add_argument("--eod_token", default="<|endoftext|>", help="appended to each document unless it ends with it")
    p.add_argument("--num_processes", type=int, default=None, help="tokenizer processes (default: CPU count)")
    p.add_argument("--skip_faulty_lines", action="store_true", help="skip lines that cannot be packed, and list them")
    add_policy_flag(p)
    p.add_argument(
        "--tokenizer_backend",
        choices=("auto", "hf", "tiktoken"),
        default="auto",
        help="auto: tiktoken for GPT-2's vocabulary (its ids matched HF's on every Unicode code point and 250k random"
        " token concatenations), HF tokenizers for every other; tiktoken: refuse any other vocabulary; hf: always HF",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar on stderr")


def _create_packed_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.pack import pack_jsonl

    r = pack_jsonl(
        a.src_path,
        a.dst_path,
        tokenizer_file=a.tokenizer_file,
        jq_pattern=a.jq_pattern,
        eod_token=a.eod_token,
        index_path=a.index_path,
        num_processes=a.num_processes,
        skip_faulty_lines=a.skip_faulty_lines,
        file_existence_policy=a.file_existence_policy,
        tokenizer_backend=a.tokenizer_backend,
        progress=not a.no_progress,
    )
    if r is None:
        return None
    blocker = f": {r.blocker}" if r.blocker else ""
    return (
        f"{r.dst}: {r.num_docs} documents, {r.num_tokens} tokens of {r.width} bytes ({r.backend} tokenizer{blocker},"
        f" {r.num_tokens / r.seconds / 1e6:.2f}M tokens/s, {len(r.skipped)} lines skipped)"
    )


def _inspect_pbin_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the .pbin file")
    p.add_argument("--tokenizer_file", default=None, help="decode the document with this tokenizer.json")
    p.add_argument("--doc", type=int, default=0, help="which document to show (0-based; negative counts from the end)")


def _inspect_pbin(a: argparse.Namespace) -> None:
    """Prints the facts; exits with status 1 when the file is invalid, or when the document holds ids that the
    tokenizer does not have (the wrong tokenizer)."""
    from jaxgpt.data.format.pbin import inspect

    facts, pf = inspect(a.path)
    for key, value in facts.items():
        print(f"{key:>12}: {value}")
    if pf is None:
        raise SystemExit(1)
    if pf.num_docs == 0:
        return
    doc = a.doc + pf.num_docs if a.doc < 0 else a.doc
    tokens = pf.document(doc)
    print(f"\n--- document {doc}: {len(tokens)} tokens, first ids {tokens[:12].tolist()}")
    if a.tokenizer_file:
        from jaxgpt.data.tokenize import load_tokenizer

        tokenizer = load_tokenizer(a.tokenizer_file)
        # An id beyond the vocabulary means the wrong tokenizer: tiktoken raises on it and HF decodes it to "".
        unknown = tokenizer.unknown_ids(tokens)
        if len(unknown):
            raise PackedDataError(
                f"{a.path}: document {doc} holds token id {unknown[0]}, which {a.tokenizer_file} does not have (its"
                f" ids end at {tokenizer.max_id}); is it the tokenizer this file was packed with?"
            )
        sys.stdout.write(tokenizer.decode(tokens) + "\n")


def _checkpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a jaxgpt run directory (holding checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")


def _export_hf_flags(p: argparse.ArgumentParser) -> None:
    _checkpoint_flags(p)
    p.add_argument("--out", required=True, help="the folder to write; must not exist, or be empty")
    p.add_argument("--dtype", default="float32", help="float32 (exact logits) or bfloat16 (half the bytes)")
    p.add_argument("--tokenizer_file", default=None, help="default: DIR/tokenizer.json, else the run's tokenizer")
    p.add_argument("--eod_token", default="<|endoftext|>", help="bos, eos and pad of the exported tokenizer")


def _export_hf(a: argparse.Namespace) -> str:
    from jaxgpt import checkpoint
    from jaxgpt.interop import export

    checkpoint.quiet_orbax_errors()
    export.to_hf(a.workdir, a.out, step=a.step, dtype=a.dtype, tokenizer_file=a.tokenizer_file, eod_token=a.eod_token)
    return a.out


def _export_modalities_flags(p: argparse.ArgumentParser) -> None:
    _checkpoint_flags(p)
    p.add_argument("--out", required=True, help="the folder to write; must not exist, or be empty")
    p.add_argument("--tokenizer_file", default=None, help="default: DIR/tokenizer.json, else the run's tokenizer")
    p.add_argument("--eod_token", default="<|endoftext|>", help="the token at which generate_text stops")
    p.add_argument("--prompt", default="Once upon a time", help="generate_text's prompt_template ({name} asks)")


def _export_modalities(a: argparse.Namespace) -> str:
    from jaxgpt import checkpoint
    from jaxgpt.interop import export

    checkpoint.quiet_orbax_errors()
    export.to_modalities(
        a.workdir, a.out, step=a.step, tokenizer_file=a.tokenizer_file, eod_token=a.eod_token, prompt=a.prompt
    )
    return a.out


def _generate_flags(p: argparse.ArgumentParser) -> None:
    _checkpoint_flags(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--prompts_file", default=None, help="a text file of prompts, one per line")
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="default 128; with --chat what the prompt leaves of data.seq_len, at most 64",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top_k", type=int, default=0, help="0 is off")
    p.add_argument("--top_p", type=float, default=1.0, help="1.0 is off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--batch_size", type=int, default=8, help="rows decoded together")
    p.add_argument("--tokenizer_file", default=None, help="default: WORKDIR/tokenizer.json, which training records")
    p.add_argument("--output_jsonl", default=None, help="also write one JSON object per completion here")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor over the local devices (-1: those left over)")
    p.add_argument("--chat", action="store_true", help="reply as the assistant, with the run's chat template")
    p.add_argument("--chat_template_file", default=None, help="--chat: default WORKDIR/chat_template.yaml")


def _generate(a: argparse.Namespace) -> None:
    from jaxgpt import generate

    generate.run_command(a)


def _plot_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a run's workdir (several: overlaid, one colour each)")
    p.add_argument("--out", default=None, help="the image (.png, .pdf, .svg, ...); default: the first DIR/metrics.png")
    p.add_argument(
        "--layers",
        action="store_true",
        help="one run's per-layer statistics (train.layer_stats_every) as heat maps; default --out: DIR/layers.png",
    )


def _plot(a: argparse.Namespace) -> str:
    from jaxgpt.plots import plot_layers, plot_runs

    if not a.layers:
        return plot_runs(a.dirs, a.out)
    if len(a.dirs) != 1:
        raise MetricsError(f"--layers draws one run; {len(a.dirs)} were given: {' '.join(a.dirs)}")
    return plot_layers(a.dirs[0], a.out)


def _eval_flags(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a jaxgpt run directory: its newest checkpoint, or --step")
    src.add_argument("--hf", help="a Hugging Face folder of a class jaxgpt imports (tools/export_hf.py writes one)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint step to evaluate (default: the newest)")
    p.add_argument("--task", action="append", required=True, help="NAME:KIND:PATH[@N] (repeatable)")
    p.add_argument("--batch_size", type=int, default=8, help="rows per forward pass (a row packs many requests)")
    p.add_argument("--mesh", default="-1,1,1", help="DATA,FSDP,TENSOR over the local devices (default: all data)")
    p.add_argument("--tokenizer_file", default=None, help="default: the run's (or the folder's) tokenizer.json")
    p.add_argument(
        "--bootstrap_iters", type=int, default=100_000, help="resamples for the cloze perplexity's stderr (lm-eval's)"
    )
    p.add_argument("--out", default=None, help="the JSON to write (default: DIR/evals/step_<N>.json; --hf: none)")


def _eval(a: argparse.Namespace) -> str | None:
    from jaxgpt.evals.run import run_command

    return run_command(a)


def _eval_convert_flags(p: argparse.ArgumentParser) -> None:
    from jaxgpt.evals.convert import add_convert_flags

    add_convert_flags(p)


def _eval_convert(a: argparse.Namespace) -> None:
    from jaxgpt.evals.convert import run_convert

    run_convert(a)


class Command(NamedTuple):
    help: str
    flags: Callable[[argparse.ArgumentParser], None]  # adds the command's arguments to its parser
    run: Callable[[argparse.Namespace], str | None]  # returns what it wrote (printed as "wrote ...") or None
    also: tuple[type[BaseException], ...] = ()  # errors besides JaxgptError that end in one line (OSError on outputs)


COMMANDS = {
    "generate": Command("sample text from a run's checkpoint (kv cache)", _generate_flags, _generate, (OSError,)),
    "eval": Command(
        "downstream tasks (multiple choice, cloze, perplexity) as lm-eval scores them; `eval convert` makes task files",
        _eval_flags,
        _eval,
        (OSError,),
    ),
    "plot": Command("draw metrics.jsonl: loss, lr, grad norm, tokens/s", _plot_flags, _plot),
    "create_memmap_index": Command("JSONL -> .idx", _create_memmap_index_flags, _create_memmap_index),
    "create_packed_data": Command("indexed JSONL -> .pbin", _create_packed_data_flags, _create_packed_data),
    "inspect_pbin": Command("a .pbin's header, documents, verdict", _inspect_pbin_flags, _inspect_pbin),
}
EVAL_CONVERT = Command(
    "a published data set (HellaSwag, ARC, PIQA, LAMBADA) -> a jaxgpt task file",
    _eval_convert_flags,
    _eval_convert,
    (OSError,),
)
EXPORTS = {
    "hf": Command("a native Hugging Face model folder", _export_hf_flags, _export_hf, (OSError,)),
    "modalities": Command(
        "Modalities' GPT2LLM state dict and configs", _export_modalities_flags, _export_modalities, (OSError,)
    ),
}


def _add(subparsers, name: str, command: Command, prog: str | None = None) -> None:
    p = subparsers.add_parser(name, help=command.help, description=command.help, prog=prog)
    command.flags(p)
    p.set_defaults(run=command.run, also=command.also)


def parser(prog: str = "jaxgpt") -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("train", help="train or resume a run (python -m jaxgpt.train; --help lists its flags)")
    commands.add_parser("plan", help="a run's sizes, memory per device, fit and time, before it runs (--help)")
    for name, command in COMMANDS.items():
        _add(commands, name, command)
    exports = commands.add_parser("export", help="a run's checkpoint as a Hugging Face or Modalities model")
    targets = exports.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, command in EXPORTS.items():
        _add(targets, name, command)
    add_data_commands(commands)
    return root


def run(argv: list[str], prog: str = "jaxgpt") -> None:
    """Parses argv (`COMMAND [ARGS]`) and runs that command at the edge of clean_errors."""
    if argv[:1] == ["train"]:  # absl parses the training flags (config files and --config.key=value overrides)
        from jaxgpt.train.loop import entry

        entry([f"{prog} train", *argv[1:]])
        return
    if argv[:1] == ["plan"]:  # the same --config flags, parsed by absl in the plan's own FlagValues
        from jaxgpt.plan import entry as plan

        plan(argv[1:])
        return
    if argv[:2] == ["eval", "convert"]:  # a command of its own: `jaxgpt eval` requires --task, this one does not
        commands = argparse.ArgumentParser(prog=prog).add_subparsers()
        _add(commands, "convert", EVAL_CONVERT, prog=f"{prog} eval convert")
        _execute(commands.choices["convert"].parse_args(argv[2:]))
        return
    _execute(parser(prog).parse_args(argv))


def _execute(args: argparse.Namespace) -> None:
    with clean_errors(*args.also):
        wrote = args.run(args)
    if wrote is not None:
        print(f"wrote {wrote}")


def run_as(name: str, prog: str) -> None:
    """A thin entry (tools/*.py, python -m jaxgpt.generate): `name`'s flags under its own program name."""
    commands = argparse.ArgumentParser(prog=prog).add_subparsers()
    command = {**COMMANDS, **{f"export {k}": v for k, v in EXPORTS.items()}}[name]
    _add(commands, name, command, prog=prog)
    _execute(commands.choices[name].parse_args(sys.argv[1:]))


def main(argv: list[str] | None = None) -> None:
    run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
