"""Exports a jaxgpt checkpoint for Modalities 0.5.0: its GPT2LLM's state dict, model config and a generate_text config.

    python tools/export_modalities.py --workdir=DIR [--step=N] --out=OUT [--tokenizer_file=tokenizer.json]
        [--eod_token='<|endoftext|>'] [--prompt='Once upon a time']

OUT gets model.bin (torch.save, the FSDP1 full-state-dict layout), model_config.yaml (the `gpt2` component),
text_generation.yaml and the tokenizer files. Then:
    modalities generate_text --config_file_path OUT/text_generation.yaml
Needs torch (the test extra); the paths inside text_generation.yaml are relative to its folder,
which can move.
"""

from jaxgpt.cli import run_as

if __name__ == "__main__":
    run_as("export modalities", prog="tools/export_modalities.py")
