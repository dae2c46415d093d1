"""A run's curves from its metrics.jsonl: train and eval loss against step (tokens seen on the top axis; with
data.val_mixture, an eval loss per component too), learning rate, gradient norm and throughput, for one run or several
overlaid; and a run's per-layer statistics (train.layer_stats_every) as heat maps of layer against step.

`python tools/plot_metrics.py DIR [DIR ...] [--out F.png]` is the CLI (`--layers`: the heat maps, DIR/layers.png);
`train.run` writes DIR/metrics.png through `plot_runs` when it ends. In a notebook, `figure(read_runs([DIR]))` (or
`layers_figure(read_run(DIR, label))`) shows itself as a PNG, no pyplot needed.

Reading is tolerant where a real run leaves gaps and strict where a file was damaged: a half-written last line (a run
still writing, or killed mid-line) is not an event yet and is skipped; a run without validation data has no eval
events; a step logged twice (a file a resume appended to) keeps its later record. Any other line that is not a jaxgpt
event is an error naming the file and line, since jaxgpt writes whole lines and rewrites the file on resume.

Only matplotlib's object API (Figure and the Agg canvas), never pyplot: nothing here selects a backend, needs a
display or changes the pyplot state of a notebook. Never imports jax.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from jaxgpt import rundir
from jaxgpt.errors import MetricsError
from jaxgpt.io import atomic_output

# The event kinds drawn, the value each must hold and the values drawn when present (recorder.py writes them); other
# kinds and keys (a newer jaxgpt's) are passed over.
REQUIRED = {"train": "loss", "eval": "eval_loss"}
LAYERS_PLOT = "layers.png"  # plot_layers' default, beside metrics.png
DRAWN = {"train": ("loss", "lr", "grad_norm", "tokens_per_s"), "eval": ("eval_loss",)}
# An eval loss per data.val_mixture component, "eval_loss/<name>", drawn beside the total with these markers
EVAL_PART, PART_MARKERS = "eval_loss/", "s^vDxP*"
# A downstream task's metric, "eval/<task>/<metric>" (train.eval_tasks; jaxgpt/evals), and its "..._stderr"
TASK, STDERR = "eval/", "_stderr"
TASK_MARKERS = "os^vDxP*"
# The per-layer statistics, "layers/<stat>/<layer>" in the "layers" events (jaxgpt/train/layer_stats.py's STATS)
LAYERS, LAYER_STATS = "layers", ("param_norm", "grad_norm", "update_norm", "update_ratio", "act_rms")


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """One run's events by step, in step order."""

    label: str  # the run's name in the legend
    train: dict[int, dict]  # step -> train event
    eval: dict[int, dict]  # step -> eval event; empty for a run without validation data
    tokens_per_step: int | None  # from the run's config.json; None when the workdir has none
    layers: dict[int, dict] = dataclasses.field(default_factory=dict)  # step -> per-layer statistics event
    decay_start: int | None = None  # a wsd run's first decay step (config.json's derived.lr_schedule); else None

    def series(self, kind: str, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of `key` over the events of `kind` that hold it."""
        events = self.train if kind == "train" else self.eval
        steps = [s for s, e in events.items() if key in e]
        return steps, [float(events[s][key]) for s in steps]

    def task_metrics(self) -> list[str]:
        """The downstream tasks' metric keys the run logged ("eval/<task>/<metric>"), in the order first logged."""
        keys = dict.fromkeys(k for e in self.eval.values() for k in e if is_task_metric(k))
        return list(keys)

    def eval_parts(self) -> list[str]:
        """The data.val_mixture components whose eval loss the run logged, in the order of their first event."""
        keys = dict.fromkeys(k for e in self.eval.values() for k in e if k.startswith(EVAL_PART))
        return [k[len(EVAL_PART) :] for k in keys]


def read_events(path: str) -> dict[str, dict[int, dict]]:
    """{"train": {step: event}, "eval": {step: event}, "layers": {step: event}} of one metrics.jsonl, checked line by
    line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise MetricsError(f"{path}: no such file (a jaxgpt workdir holds one from its first logged step)") from None
    except OSError as e:
        raise MetricsError(f"{path}: cannot read it ({e.strerror})") from None
    events = {kind: {} for kind in (*REQUIRED, LAYERS)}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line.rstrip("\n"))
        except (ValueError, RecursionError) as e:  # also an integer of > 4300 digits, or nesting past the stack
            if lineno == len(lines):  # what a run still writing, or killed mid-line, leaves: not an event yet
                continue
            why = f"{e.msg}: column {e.colno}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
            raise MetricsError(
                f"{path}:{lineno}: not a JSON line ({why}); jaxgpt writes whole lines, so something else changed "
                "this file"
            ) from None
        kind = check_event(event, path, lineno)
        if kind in events:
            # A step logged twice: a resume appended to the file of the run it continues; its later record holds.
            events[kind][event["step"]] = event
    return {kind: dict(sorted(by_step.items())) for kind, by_step in events.items()}


def check_event(event, path: str, lineno: int) -> str | None:
    """The event's kind, after checking the fields this module reads."""
    if not isinstance(event, dict):
        raise MetricsError(f"{path}:{lineno}: {type(event).__name__} {event!r:.60} is not a jaxgpt event (an object)")
    step, kind = event.get("step"), event.get("event")
    if type(step) is not int or step < 0:
        raise MetricsError(f"{path}:{lineno}: step={step!r} is not a step number (an integer >= 0)")
    if kind == LAYERS:
        for key, value in event.items():
            if key.startswith(f"{LAYERS}/") and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise MetricsError(f"{path}:{lineno}: {key}={value!r} is not a number")
    if kind not in REQUIRED:
        return kind
    parts = [k for k in event if k.startswith(EVAL_PART) or k.startswith(TASK)] if kind == "eval" else []
    if REQUIRED[kind] not in event and not any(is_task_metric(k) for k in parts):  # tasks alone: no validation data
        raise MetricsError(f"{path}:{lineno}: this {kind} event has no {REQUIRED[kind]!r}")
    for key in (*DRAWN[kind], *parts):
        value = event.get(key, 0.0)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise MetricsError(f"{path}:{lineno}: {key}={value!r} is not a number")
    return kind


def is_task_metric(key: str) -> bool:
    return key.startswith(TASK) and key.count("/") == 2 and not key.endswith(STDERR)


def read_tokens_per_step(path: str) -> int | None:
    """derived.tokens_per_step of a run's config.json; None when the file is absent (a metrics.jsonl copied alone)."""
    try:
        with open(path) as f:
            resolved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetricsError(f"{path}: cannot read it as JSON ({e})") from None
    derived = resolved.get("derived") if isinstance(resolved, dict) else None
    value = derived.get("tokens_per_step") if isinstance(derived, dict) else None
    if type(value) is not int or value < 1:
        raise MetricsError(f"{path}: derived.tokens_per_step={value!r} is not a token count (is it a jaxgpt run's?)")
    return value


def read_decay_start(path: str) -> int | None:
    """The first decay step of a wsd run's config.json (derived.lr_schedule); None for another schedule, a run of an
    older jaxgpt that did not record it, or no file."""
    try:
        with open(path) as f:
            schedule = json.load(f).get("derived", {}).get("lr_schedule")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # read_tokens_per_step names what is wrong with the file
    if not isinstance(schedule, dict) or schedule.get("kind") != "wsd" or type(schedule.get("stable_end")) is not int:
        return None
    return schedule["stable_end"] + 1


def locate(path: str) -> tuple[str, str]:
    """(workdir, metrics file) of a run named by its workdir or by its metrics .jsonl file."""
    if path.endswith(".jsonl"):
        return os.path.dirname(path) or ".", path
    if os.path.exists(path) and not os.path.isdir(path):
        raise MetricsError(f"{path}: not a run directory (give the workdir, or its {rundir.METRICS})")
    return path, os.path.join(path, rundir.METRICS)


def default_labels(paths: list[str]) -> list[str]:
    """Each run's folder name, or its path where two folders share a name."""
    folders = [os.path.normpath(locate(p)[0]) for p in paths]
    names = [os.path.basename(os.path.abspath(f)) for f in folders]
    return names if len(set(names)) == len(names) else folders


def read_run(path: str, label: str) -> RunMetrics:
    """A workdir's (or its metrics.jsonl's) events and tokens per step."""
    workdir, metrics_path = locate(path)
    events = read_events(metrics_path)
    if not events["train"]:
        raise MetricsError(f"{metrics_path}: holds no train events yet, so there is nothing to plot")
    record = os.path.join(workdir, rundir.CONFIG)
    tokens, decay_start = read_tokens_per_step(record), read_decay_start(record)
    return RunMetrics(label, events["train"], events["eval"], tokens, events[LAYERS], decay_start)


def read_runs(paths: list[str], labels: list[str] | None = None) -> list[RunMetrics]:
    if not paths:
        raise MetricsError("no run given: name one or more workdirs")
    labels = labels or default_labels(paths)
    return [read_run(p, label) for p, label in zip(paths, labels, strict=True)]


class RunsFigure(Figure):
    """A Figure that a notebook shows as a PNG without pyplot (a bare Figure displays as its repr there)."""

    def _repr_png_(self) -> bytes:
        png = io.BytesIO()
        self.savefig(png, format="png")
        return png.getvalue()


def figure(runs: list[RunMetrics]) -> RunsFigure:
    """Loss (train solid, eval dashed), lr, grad norm and tokens/s against step; one colour per run."""
    tasks = any(run.task_metrics() for run in runs)  # a third row: the downstream tasks' curves
    fig = RunsFigure(figsize=(12, 12 if tasks else 8), dpi=100)
    FigureCanvasAgg(fig)  # the canvas savefig renders on; attached here, so no pyplot backend is involved
    # Fixed margins (room for the tokens axis and the title above): a constrained layout doubles the drawing time,
    # 0.3 s more at the end of every run.
    grid = {"left": 0.07, "right": 0.98, "bottom": 0.05, "top": 0.9 if tasks else 0.87, "hspace": 0.22, "wspace": 0.2}
    axes = fig.subplots(3 if tasks else 2, 2, sharex=True, gridspec_kw=grid).flat
    ax_loss, ax_lr, ax_grad, ax_speed = axes[:4]
    if tasks:
        task_panels(axes[4], axes[5], runs)
    for i, run in enumerate(runs):
        color, name = f"C{i % 10}", run.label if len(runs) > 1 else ""
        ax_loss.plot(*run.series("train", "loss"), color=color, label=f"{name} train".strip())
        if run.eval:
            ax_loss.plot(*run.series("eval", "eval_loss"), "o--", color=color, label=f"{name} eval".strip())
        for j, part in enumerate(run.eval_parts()):
            marker = PART_MARKERS[j % len(PART_MARKERS)]
            steps, losses = run.series("eval", EVAL_PART + part)
            ax_loss.plot(steps, losses, f"{marker}:", color=color, label=f"{name} eval {part}".strip())
        ax_lr.plot(*run.series("train", "lr"), color=color, label=run.label)
        ax_grad.plot(*run.series("train", "grad_norm"), color=color, label=run.label)
        ax_speed.plot(*run.series("train", "tokens_per_s"), color=color, label=run.label)
        if run.decay_start is not None:  # a wsd run: where its lr leaves the stable phase, and what the loss did then
            where = f"{name} decay starts (step {run.decay_start})".strip()
            ax_lr.axvline(run.decay_start, color=color, linestyle=":", label=where)
            ax_loss.axvline(run.decay_start, color=color, linestyle=":", label="_nolegend_")
    ax_loss.set(title="loss", ylabel="cross-entropy (nats/token)")
    ax_lr.set(title="learning rate")
    ax_grad.set(title="gradient norm (before clipping)")
    # The first logged step of a run, and of every resume, includes compilation and runs 10-100x slower: on a log
    # axis the steady state stays readable next to it.
    ax_speed.set(title="throughput", ylabel="tokens/s", yscale="log")
    for ax in axes[-2:]:
        ax.set_xlabel("step")
    ax_grad.xaxis.set_major_locator(MaxNLocator(integer=True))  # shared by all four panels
    ax_loss.legend()
    if len(runs) > 1 or any(run.decay_start is not None for run in runs):
        ax_lr.legend()
    else:
        fig.suptitle(runs[0].label)
    tokens_axis(ax_loss, runs)
    return fig


def task_panels(ax_acc, ax_ppl, runs: list[RunMetrics]) -> None:
    """The downstream tasks' curves: accuracies on the left, perplexities and bits per byte on the right (log)."""
    for i, run in enumerate(runs):
        color, name = f"C{i % 10}", run.label if len(runs) > 1 else ""
        for j, key in enumerate(run.task_metrics()):
            _, task, metric = key.split("/")
            ax = ax_acc if metric.startswith("acc") else ax_ppl
            marker = TASK_MARKERS[j % len(TASK_MARKERS)]
            ax.plot(*run.series("eval", key), f"{marker}-", color=color, label=f"{name} {task} {metric}".strip())
    ax_acc.set(title="downstream tasks: accuracy", ylabel="accuracy")
    ax_ppl.set(title="downstream tasks: perplexity, bits per byte", yscale="log")
    for ax in (ax_acc, ax_ppl):
        if ax.lines:
            ax.legend(fontsize="small")


def tokens_axis(ax, runs: list[RunMetrics]) -> None:
    """Tokens seen on the top axis, where every run has the same tokens per step; else the title says why not."""
    per_step = {run.tokens_per_step for run in runs}
    if len(per_step) != 1 or None in per_step:
        missing = [run.label for run in runs if run.tokens_per_step is None]
        why = f"no {rundir.CONFIG} in {', '.join(missing)}" if missing else "the runs differ in tokens/step"
        ax.set_title(f"loss (no tokens axis: {why})")
        return
    (n,) = per_step
    top = ax.secondary_xaxis("top", functions=(lambda step: step * n, lambda tokens: tokens / n))
    top.set_xlabel(f"tokens seen ({n:,} per step)")
    top.xaxis.set_major_formatter(EngFormatter())


def layer_order(name: str) -> tuple[int, int]:
    """Layers from the input up: the embeddings, the blocks h.0, h.1, ..., then the final norm and the head."""
    if name.startswith("h.") and name[2:].isdigit():
        return 1, int(name[2:])
    return (0, 0) if name in ("wte", "wpe") else (2, 0 if name == "lm_head_norm" else 1)


def layer_grid(run: RunMetrics, stat: str) -> tuple[list[int], list[str], np.ndarray]:
    """(steps, layers from the input up, values [layers, steps]; NaN where a step lacks a layer) of one statistic."""
    steps, prefix = list(run.layers), f"{LAYERS}/{stat}/"
    names = {k[len(prefix) :] for event in run.layers.values() for k in event if k.startswith(prefix)}
    layers = sorted(names, key=lambda name: (layer_order(name), name))
    values_LxS = np.array([[run.layers[s].get(prefix + name, np.nan) for s in steps] for name in layers], float)
    return steps, layers, values_LxS.reshape(len(layers), len(steps))


def layers_figure(run: RunMetrics) -> RunsFigure:
    """One heat map per statistic: layer (from the input up) against step, in a log colour scale."""
    if not run.layers:
        raise MetricsError(f"{run.label}: holds no per-layer statistics; train with train.layer_stats_every=N")
    fig = RunsFigure(figsize=(12, 14), dpi=100)
    FigureCanvasAgg(fig)
    grid = {"left": 0.1, "right": 0.98, "bottom": 0.04, "top": 0.94, "hspace": 0.3}
    axes = fig.subplots(len(LAYER_STATS), 1, sharex=True, gridspec_kw=grid)
    for ax, stat in zip(axes, LAYER_STATS):
        steps, layers, values_LxS = layer_grid(run, stat)
        positive = values_LxS[np.isfinite(values_LxS) & (values_LxS > 0)]
        norm = LogNorm(positive.min(), positive.max()) if positive.size else None
        mesh = ax.pcolormesh(step_edges(steps), np.arange(len(layers) + 1), values_LxS, norm=norm, shading="flat")
        ax.set_yticks(np.arange(len(layers)) + 0.5, layers, fontsize=7)
        ax.set_title(stat.replace("_", " "))
        fig.colorbar(mesh, ax=ax, pad=0.01)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{run.label}: per-layer statistics")
    return fig


def step_edges(steps: list[int]) -> np.ndarray:
    """Cell edges around each step: halfway to its neighbours (one step: a cell 1 wide)."""
    s = np.asarray(steps, float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def plot_layers(path: str, out: str | None = None) -> str:
    """Draws a run's per-layer heat maps into `out`, by default its DIR/layers.png."""
    run = read_run(path, default_labels([path])[0])
    if out is None:
        out = os.path.join(locate(path)[0], LAYERS_PLOT)
    save(layers_figure(run), out)
    return out


def save(fig: Figure, out: str) -> None:
    """Writes the figure to `out` whole or not at all, in the format its extension names."""
    if os.path.isdir(out):
        raise MetricsError(f"{out}: is a directory, not an image file")
    ext = os.path.splitext(out)[1].lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if ext not in formats:
        known = ", ".join(sorted(formats))
        raise MetricsError(f"{out}: the extension {ext!r} names no image format; use one of {known}")
    try:
        with atomic_output(out) as tmp:
            fig.savefig(tmp, format=ext)
    except OSError as e:
        raise MetricsError(f"{out}: cannot write it ({e.strerror or e})") from None


def plot_runs(paths: list[str], out: str | None = None, labels: list[str] | None = None) -> str:
    """Draws the runs (workdirs or metrics.jsonl files) into `out`, by default the first run's metrics.png."""
    runs = read_runs(paths, labels)
    if out is None:
        out = os.path.join(locate(paths[0])[0], rundir.PLOT)
    save(figure(runs), out)
    return out
