"""Exports a jaxgpt checkpoint for Modalities 0.5.0: its GPT2LLM's state dict, model config and a generate_text config.

    python tools/export_modalities.py --workdir=DIR [--step=N] --out=OUT [--tokenizer_file=tokenizer.json]
        [--eod_token='<|endoftext|>'] [--prompt='Once upon a time']

OUT gets model.bin (torch.save, the FSDP1 full-state-dict layout), model_config.yaml (the `gpt2` component),
text_generation.yaml and the tokenizer files. Then:
    modalities generate_text --config_file_path OUT/text_generation.yaml
Needs torch (the test extra); the paths inside text_generation.yaml are relative to its folder,
which can move.
"""

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a jaxgpt run directory (holding checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")
    p.add_argument("--out", required=True, help="the folder to write; must not exist, or be empty")
    p.add_argument("--tokenizer_file", default=None, help="default: DIR/tokenizer.json, else the run's tokenizer")
    p.add_argument("--eod_token", default="<|endoftext|>", help="the token at which generate_text stops")
    p.add_argument("--prompt", default="Once upon a time", help="generate_text's prompt_template ({name} asks)")
    args = p.parse_args()

    from jaxgpt import checkpoint, hf, modalities_export
    from jaxgpt.data.cli import clean_errors

    with clean_errors(hf.ExportError, checkpoint.CheckpointError):
        modalities_export.export_workdir(
            args.workdir,
            args.out,
            step=args.step,
            tokenizer_file=args.tokenizer_file,
            eod_token=args.eod_token,
            prompt=args.prompt,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
