"""Training: the train state, the pure jitted step, the optimizer, and the loop with its rooms (loop.py names them).

    python -m jaxgpt.train --config=configs/gpt60m.py --workdir=DIR [--config.key=value ...]
    from jaxgpt import train; train.run(cfg, workdir)

`run` is imported on first use, so that `checkpoint.load` (which reads the train state's layout in state.py) does not
import the loop, the recorder or W&B.
"""

__all__ = ["run"]


def __getattr__(name):
    if name == "run":
        from jaxgpt.train.loop import run

        return run
    raise AttributeError(f"module 'jaxgpt.train' has no attribute {name!r}")
