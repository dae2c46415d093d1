"""Train, or resume, a run in DIR (jaxgpt/train/loop.py):

    python -m jaxgpt.train --config=configs/gpt60m.py --workdir=DIR [--config.section.key=value ...] [--stop_after=N]

A workdir that holds a checkpoint resumes from it; the knobs and their defaults: jaxgpt/config.py.
"""

from jaxgpt.train import loop

if __name__ == "__main__":
    loop.entry()
