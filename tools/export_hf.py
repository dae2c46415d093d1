"""Exports a jaxgpt checkpoint as a native Hugging Face model folder (no trust_remote_code, no torch needed).

    python tools/export_hf.py --workdir=DIR [--step=N] --out=OUT [--dtype=float32|bfloat16]
        [--tokenizer_file=tokenizer.json] [--eod_token='<|endoftext|>']

OUT gets config.json, model.safetensors, the tokenizer files (bos/eos/pad = the eod token) and generation_config.json
(padded vocab rows suppressed). Which class a model's options map to: jaxgpt/interop/hf.py. Loads with
`transformers.AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`.
"""

from jaxgpt.cli import run_as

if __name__ == "__main__":
    run_as("export hf", prog="tools/export_hf.py")
