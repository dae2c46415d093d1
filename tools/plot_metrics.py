"""Plots a run's metrics.jsonl, or several runs overlaid: train/eval loss (tokens seen on the top axis), lr, grad norm,
tokens/s.

python tools/plot_metrics.py DIR [DIR ...] [--out F.png]
python tools/plot_metrics.py DIR --layers [--out F.png]    # per-layer statistics as heat maps (DIR/layers.png)

The default output is the first DIR's metrics.png. A DIR may also be a metrics .jsonl file itself.
"""

from jaxgpt.cli import run_as

if __name__ == "__main__":
    run_as("plot", prog="tools/plot_metrics.py")
