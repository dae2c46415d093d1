"""Plots a run's metrics.jsonl, or several runs overlaid: train/eval loss (tokens seen on the top axis), lr, grad norm,
tokens/s.

python tools/plot_metrics.py DIR [DIR ...] [--out F.png]

The default output is the first DIR's metrics.png. A DIR may also be a metrics .jsonl file itself.
"""

import argparse

from jaxgpt.data.cli import clean_errors
from jaxgpt.plots import plot_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a run's workdir (several: overlaid, one colour each)")
    p.add_argument("--out", default=None, help="the image (.png, .pdf, .svg, ...); default: the first DIR/metrics.png")
    args = p.parse_args()
    with clean_errors():
        out = plot_runs(args.dirs, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
