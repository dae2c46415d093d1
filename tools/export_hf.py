"""Exports a jaxgpt checkpoint as a native Hugging Face model folder (no trust_remote_code, no torch needed).

    python tools/export_hf.py --workdir=DIR [--step=N] --out=OUT [--dtype=float32|bfloat16]
        [--tokenizer_file=tokenizer.json] [--eod_token='<|endoftext|>']

OUT gets config.json, model.safetensors, the tokenizer files (bos/eos/pad = the eod token) and generation_config.json
(padded vocab rows suppressed). Which class a model's options map to: jaxgpt/hf.py. Loads with
`transformers.AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`.
"""

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a jaxgpt run directory (holding checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")
    p.add_argument("--out", required=True, help="the folder to write; must not exist, or be empty")
    p.add_argument("--dtype", default="float32", help="float32 (exact logits) or bfloat16 (half the bytes)")
    p.add_argument("--tokenizer_file", default=None, help="default: DIR/tokenizer.json, else the run's tokenizer")
    p.add_argument("--eod_token", default="<|endoftext|>", help="bos, eos and pad of the exported tokenizer")
    args = p.parse_args()

    from jaxgpt import checkpoint, hf
    from jaxgpt.data.cli import clean_errors

    with clean_errors(hf.ExportError, checkpoint.CheckpointError):
        hf.export_workdir(
            args.workdir,
            args.out,
            step=args.step,
            dtype=args.dtype,
            tokenizer_file=args.tokenizer_file,
            eod_token=args.eod_token,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
