"""`jaxgpt plan --config=F [--config.key=value ...] --devices=8 [--device=h100|h200|a100|cpu|MEMORY_GB]`: before a
run, its sizes, its memory per device, whether that fits the device, and how long it takes.

The memory comes from XLA: the real train step (jaxgpt.train.step) is compiled for a mesh of that many fake CPU
devices from abstract values (nothing is allocated) and its memory analysis read; beside it, the analytic model of
jaxgpt/train/memory.py, and the difference. The figure that decides:
- on a CPU (--device=cpu), XLA's: the program that will run (bench/plan.py measures it against a run's peak);
- on a GPU, the analytic model for the GPU's step (compute dtype and attention kernel as "auto" resolves there), since
  the CPU compiler keeps more than a GPU's does (it keeps bfloat16 values in float32, runs remat's recomputation early
  and has only XLA's attention, which keeps T x T probabilities); XLA's figure is shown as the cross-check.
Suggestions when it does not fit come from the analytic model (times XLA/analytic on a CPU), not from more compiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxgpt import model, sharding
from jaxgpt.config import RunConfig, check_overrides
from jaxgpt.data.loader import pipeline
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.errors import ConfigError, check_int
from jaxgpt.model.attention import attention_implementation, query_block
from jaxgpt.model.gpt import REMAT
from jaxgpt.train import memory
from jaxgpt.train.memory import Memory, XlaMemory
from jaxgpt.train.state import StateLayout, StepConfig, TrainState

GB = 1e9
DEFAULT_DEVICES = 8  # one host of 8 GPUs


@dataclasses.dataclass(frozen=True)
class Device:
    """One kind of device a run may train on (what --device names)."""

    name: str  # as --device names it
    memory: float  # bytes one device holds (decimal GB, as datasheets give them; CUDA sees a little less)
    platform: str  # "gpu" | "cpu": what compute_dtype "auto" and the attention kernel resolve for
    device_kind: str  # matched against jaxgpt.model.flops' peak table ("" for CPU and unknown GPUs)
    compute_capability: str = "8.0"  # of a GPU: whether cuDNN flash attention runs ("auto" picks it from 8.0 on)


DEVICES = {
    "h100": Device("h100", 80 * GB, "gpu", "H100", "9.0"),
    "h200": Device("h200", 141 * GB, "gpu", "H200", "9.0"),
    "a100": Device("a100", 80 * GB, "gpu", "A100", "8.0"),  # the 40 GB A100: --device=40
}


def device(spec: str, n: int) -> Device:
    """--device's value: a name of DEVICES, "cpu" (n fake devices sharing this host's RAM), or a GPU's memory in
    GB."""
    if spec in DEVICES:
        return DEVICES[spec]
    if spec == "cpu":
        return Device("cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / n, "cpu", "")
    try:
        gigabytes = float(spec)
    except ValueError:
        gigabytes = 0.0
    if not gigabytes > 0:
        raise ConfigError(f"--device={spec!r} is unknown: one of {', '.join(DEVICES)}, cpu, or a GPU's memory in GB")
    return Device(f"{spec} GB GPU", gigabytes * GB, "gpu", "")


# The plan
# ------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Choice:
    """One way to run the same global batch on the same devices: a row of the suggestions."""

    micro_batch: int  # sequences per replica per micro batch
    grad_accum: int  # micro batches per step: micro_batch * grad_accum * replicas = the global batch
    remat: str  # train.remat
    fsdp: int  # mesh.fsdp (mesh.data is 1: FSDP holds less than plain replicas and runs the same FLOPs)
    tensor: int  # mesh.tensor
    memory: float  # modelled bytes per device
    speed: float  # modelled tokens/s (relative, 1 / recompute factor, when the device's peak is unknown)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Step time at an assumed MFU."""

    mfu: float  # model FLOPs utilisation assumed (--mfu)
    peak_flops: float | None  # one device's dense bf16 peak; None: unknown (a GPU given by its memory only)
    peak_source: str  # where the peak comes from
    total_peak: float | None  # what MFU divides by: all devices (a CPU's fake devices share one host: once)
    num_steps: int | None  # steps of the run; None: unknown (one epoch, and no data to count it)
    steps_source: str  # where num_steps comes from

    def step_seconds(self, tokens_per_step: int, flops_per_token: float) -> float | None:
        return None if self.total_peak is None else tokens_per_step * flops_per_token / (self.total_peak * self.mfu)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `jaxgpt plan` found for a config on `devices` devices of one kind."""

    device: Device
    mesh: dict  # axis sizes
    step: StepConfig  # the target's: compute dtype and attention resolved for the device
    kernel: str  # the attention kernel the device runs
    micro_batch: int  # train.micro_batch_size
    num_params: int  # jaxgpt.model.count_params
    flops_per_token: float  # training FLOPs per token, jaxgpt.model.flops_per_token
    global_batch: int  # sequences per step
    xla: XlaMemory  # of the step compiled for the CPU mesh
    compiled: Memory  # analytic, of the program XLA compiled (CPU attention)
    analytic: Memory  # analytic, of the device's step
    calibration: float  # factor on the analytic temporaries: XLA/analytic on a CPU, 1 on a GPU
    headroom: float  # fraction of device memory kept free
    timing: Timing
    abstract: TrainState  # the state's shapes and logical shardings, which the suggestions re-shard
    suggestions: tuple[Choice, ...]  # () when the step fits

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.step.model.seq_len

    @property
    def usable(self) -> float:
        return self.device.memory * (1 - self.headroom)

    @property
    def ratio(self) -> float:
        """XLA's temporaries over the analytic model's, for the same program."""
        return (self.xla.total - self.xla.arguments) / self.compiled.temporaries

    @property
    def estimate(self) -> float:
        """The deciding bytes per device: XLA's on a CPU; the analytic model's for a GPU."""
        return self.analytic.state + self.calibration * self.analytic.temporaries

    @property
    def fits(self) -> bool:
        return self.estimate <= self.usable


def make(cfg: ml_collections.ConfigDict, cpus: list, target: Device, mfu: float, headroom: float) -> Plan:
    """Plans `cfg` on len(cpus) devices of kind `target`, compiling its step for a mesh of these CPU devices."""
    config = RunConfig.from_config(cfg)
    t = config.train
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=cpus)
    global_batch = t.micro_batch_size * sharding.data_parallel_size(mesh) * t.grad_accum
    num_steps, steps_source = _num_steps(config, global_batch)
    mask_ids = (0, 1) if config.data.loss_mask_tokens else None  # any two ids: the mask changes no shape
    step_cfg = StepConfig.from_config(cfg, num_steps or 1000, mask_ids).resolved(target.platform)
    kernel = attention_implementation(
        step_cfg.attention,
        step_cfg.dtype,
        step_cfg.model.head_dim,
        target.platform,
        target.compute_capability,
        doc_mask=step_cfg.model.doc_mask,
    )
    # the CPU compiler has XLA's attention only; the model, dtype and shardings are the target's
    layout = StateLayout.build(dataclasses.replace(step_cfg, attention="xla"), mesh)
    xla = memory.compiled_memory(layout, t.micro_batch_size)
    params, optimizer = memory.state_bytes(layout.abstract, dict(mesh.shape))
    shape = functools.partial(step_shape, step_cfg, t.micro_batch_size, step_cfg.grad_accum, step_cfg.remat)
    compiled = memory.analytic(shape(mesh.shape["tensor"], "xla", "cpu"), params, optimizer)
    analytic = memory.analytic(shape(mesh.shape["tensor"], kernel, target.platform), params, optimizer)
    plan = Plan(
        device=target,
        mesh=dict(mesh.shape),
        step=step_cfg,
        kernel=kernel,
        micro_batch=t.micro_batch_size,
        num_params=model.count_params(step_cfg.model),
        flops_per_token=model.flops_per_token(step_cfg.model, step_cfg.model.seq_len),
        global_batch=global_batch,
        xla=xla,
        compiled=compiled,
        analytic=analytic,
        calibration=1.0,
        headroom=headroom,
        timing=timing(config, target, mfu, len(cpus), num_steps, steps_source),
        abstract=layout.abstract,
        suggestions=(),
    )
    if target.platform == "cpu":
        plan = dataclasses.replace(plan, calibration=plan.ratio)
    if not plan.fits:
        plan = dataclasses.replace(plan, suggestions=suggest(plan))
    return plan


def step_shape(step_cfg: StepConfig, micro_batch: int, accum: int, remat: str, tensor: int, kernel: str, platform: str):
    """What the analytic model reads of the step `step_cfg` with these choices, on devices of `platform`."""
    return memory.StepShape(
        model=step_cfg.model,
        micro_batch=micro_batch,
        grad_accum=accum,
        remat=remat,
        loss_chunks=step_cfg.loss_chunks,
        compute_bytes=jnp.dtype(step_cfg.dtype).itemsize,
        attention=kernel,
        query_block=query_block(kernel, platform),
        tensor=tensor,
    )


def _num_steps(config: RunConfig, global_batch: int) -> tuple[int | None, str]:
    """train.num_steps, else one epoch of data.train_path when its files are here, else unknown (also for a
    data.mixture, which leaves data.train_path unread)."""
    if config.train.num_steps is not None:
        return config.train.num_steps, "train.num_steps"
    if config.data.mixture:
        return None, ""
    paths = [p.strip() for p in config.data.train_path.split(",") if p.strip()]
    if not paths or not all(os.path.isfile(p) for p in paths):
        return None, ""
    d = config.data
    source = PackedWindowSource(paths, d.seq_len, reuse_last_target=d.reuse_last_target)
    return pipeline.steps_per_epoch(source, global_batch), f"one epoch of data.train_path ({len(source):,} windows)"


def timing(config: RunConfig, target: Device, mfu: float, n: int, num_steps: int | None, source: str) -> Timing:
    if config.train.peak_flops:
        peak, where = float(config.train.peak_flops), "train.peak_flops"
    elif target.platform == "cpu":
        peak, where = model.measure_matmul_peak(), "this host's float32 matmul, timed now"
    else:
        peak, where = model.peak_flops(target), "jaxgpt.model.flops' table, dense bf16"
    total = None if peak is None else model.total_peak_flops(peak, [target] * n)
    return Timing(mfu, peak, where if peak else "", total, num_steps, source)


def recompute(remat: str, m, flops_per_token: float) -> float:
    """FLOPs per token with the forward a remat policy recomputes, over those without: "full" recomputes the whole
    forward (2/6 of 6N + 6LTD), "dots" the attention's score and value matmuls (2LTD), "none" nothing."""
    extra = {"none": 0.0, "dots": 2.0 * m.n_layer * m.seq_len * m.n_embd, "full": flops_per_token / 3}[remat]
    return (flops_per_token + extra) / flops_per_token


def suggest(plan: Plan) -> tuple[Choice, ...]:
    """Every (micro batch, remat, fsdp x tensor) that runs the same global batch on the same devices and fits by the
    analytic model (times plan.calibration), fastest first; ties: the smaller tensor (its all-reduces in every layer are
    not in the FLOPs), then the larger micro batch."""
    choices = []
    for tensor, state, micro_batch, accum in _splits(plan):
        for remat in REMAT:
            shape = step_shape(plan.step, micro_batch, accum, remat, tensor, plan.kernel, plan.device.platform)
            est = memory.analytic(shape, *state)
            need = est.state + plan.calibration * est.temporaries
            if need <= plan.usable:
                fsdp = plan.devices // tensor
                choices.append(Choice(micro_batch, accum, remat, fsdp, tensor, need, _speed(plan, remat)))
    return tuple(sorted(choices, key=lambda c: (-c.speed, c.tensor, -c.micro_batch)))


def _splits(plan: Plan):
    """(tensor, its state bytes, micro batch, accumulation) of every mesh data=1 x fsdp x tensor over the plan's
    devices that can shard the model, and every micro batch of the global batch on it."""
    n, heads = plan.devices, plan.step.model.n_head_kv
    for tensor in _divisors(n):
        state = memory.state_bytes(plan.abstract, {"data": 1, "fsdp": n // tensor, "tensor": tensor})
        replicas = n // tensor
        if state is None or heads % tensor or plan.global_batch % replicas:
            continue
        per_replica = plan.global_batch // replicas
        for micro_batch in _divisors(per_replica):
            yield tensor, state, micro_batch, per_replica // micro_batch


def _speed(plan: Plan, remat: str) -> float:
    factor = recompute(remat, plan.step.model, plan.flops_per_token)
    step = plan.timing.step_seconds(plan.tokens_per_step, plan.flops_per_token)
    return (1.0 if step is None else plan.tokens_per_step / step) / factor


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# What it prints
# ------------------------------------------------------------------------------------------------------------------

MAX_SUGGESTIONS = 10


def render(plan: Plan, source: str) -> str:
    """The plan as the command prints it."""
    return "\n".join([*_sizes(plan, source), *_memory(plan), *_verdict(plan), _time(plan), *_notes(plan)])


def _gb(nbytes: float) -> str:
    return f"{nbytes / GB:.3f}"


def _sizes(plan: Plan, source: str) -> list[str]:
    s, m = plan.step, plan.step.model
    mesh = " ".join(f"{k}={v}" for k, v in plan.mesh.items())
    replicas = plan.mesh["data"] * plan.mesh["fsdp"]
    return [
        f"plan: {source} on {plan.devices} x {plan.device.name} ({plan.device.memory / GB:.1f} GB each), mesh {mesh}",
        f"sizes: {plan.num_params:,} parameters | {plan.flops_per_token / 1e6:,.1f} MFLOP per token (6N + 6LTD) |"
        f" {plan.tokens_per_step:,} tokens per step ({plan.global_batch} seqs = micro batch {plan.micro_batch} x"
        f" {replicas} replicas x {s.grad_accum} accumulated, x {m.seq_len} tokens)",
        f"step: {s.compute_dtype} compute on {plan.device.platform}, remat {s.remat}, loss_chunks {s.loss_chunks},"
        f" attention {plan.kernel} (the CPU compile runs xla)",
    ]


def _memory(plan: Plan) -> list[str]:
    a, x, s = plan.analytic, plan.xla, plan.step
    rows = [
        ("params (exact: shards of the layout)", a.params, None),
        ("optimizer state (exact)", a.optimizer, None),
        ("batch (int32 inputs, targets)", a.batch, None),
        ("= arguments", a.state, x.arguments),
        ("gradients (float32, sharded)", a.gradients, None),
        (f"activations (remat {s.remat})", a.activations, None),
        (f"attention ({plan.kernel})", a.attention, None),
        (f"logits chunk (1/{s.loss_chunks} of B*T, V/{plan.mesh['tensor']})", a.logits, None),
        ("workspace (gathered weights, vocab grads)", a.workspace, None),
        ("= temporaries", a.temporaries, x.total - x.arguments),
        ("= total", a.total, x.total),
    ]
    lines = [f"{'memory per device, GB:':<44} {'analytic':>10} {'XLA (CPU)':>10}"]
    for name, analytic, xla in rows:
        lines.append(f"  {name:<42} {_gb(analytic):>10} {'' if xla is None else _gb(xla):>10}")
    lines.append(
        f"  difference XLA - analytic: {(x.total - a.total) / GB:+.3f} GB; for the program XLA compiled (xla attention"
        f" on CPU) the analytic total is {_gb(plan.compiled.total)} GB: XLA/analytic {plan.ratio:.2f} on temporaries"
    )
    return lines


def _verdict(plan: Plan) -> list[str]:
    d = plan.device
    usable = (
        f"{plan.usable / GB:.1f} GB usable per device ({d.name}: {d.memory / GB:.1f} GB less"
        f" {plan.headroom:.0%} headroom)"
    )
    if d.platform == "cpu":
        basis = "by XLA's figure"
    else:
        xla_fits = "fits too" if plan.xla.total <= plan.usable else "does not (an upper bound on a GPU: see the note)"
        basis = f"by the analytic estimate; XLA's CPU figure, {plan.xla.total / GB:.2f} GB, {xla_fits}"
    verdict = "fits" if plan.fits else "does not fit"
    lines = [f"verdict: {verdict}: {plan.estimate / GB:.2f} GB of {usable}, {basis}"]
    if not plan.fits:
        lines += _suggestions(plan)
    return lines


def _suggestions(plan: Plan) -> list[str]:
    if not plan.suggestions:
        return [f"  no micro batch, remat or fsdp x tensor split of {plan.devices} devices fits this global batch"]
    scale = (
        f"x {plan.calibration:.2f} (XLA/analytic of this config)"
        if plan.device.platform == "cpu"
        else "uncalibrated (the GPU's estimate)"
    )
    speed = "tokens/s" if plan.timing.total_peak else "relative speed"
    lines = [
        f"  choices that fit, same global batch of {plan.global_batch} seqs, by the analytic model {scale}, fastest"
        f" first (remat's recomputed FLOPs slow it; ties: less tensor parallelism, larger micro batches; no compiles):",
        f"  {'micro batch':>11} {'accum':>5} {'remat':>5} {'fsdp':>4} {'tensor':>6} {'GB/device':>9} {speed:>14}",
    ]
    for c in plan.suggestions[:MAX_SUGGESTIONS]:
        rate = f"{c.speed:,.0f}" if plan.timing.total_peak else f"{c.speed:.2f}"
        lines.append(
            f"  {c.micro_batch:>11} {c.grad_accum:>5} {c.remat:>5} {c.fsdp:>4} {c.tensor:>6} {c.memory / GB:>9.2f}"
            f" {rate:>14}"
        )
    if len(plan.suggestions) > MAX_SUGGESTIONS:
        lines.append(f"  ... and {len(plan.suggestions) - MAX_SUGGESTIONS} more")
    return lines


def _time(plan: Plan) -> str:
    t = plan.timing
    step = t.step_seconds(plan.tokens_per_step, plan.flops_per_token)
    if step is None:
        return "time: unknown peak FLOP/s for this device; give it as --config.train.peak_flops=FLOPS"
    rate = (
        f"time: at MFU {t.mfu:.2f} of {_flops(t.peak_flops)} per device ({t.peak_source}):"
        f" {step:.3g} s per step, {plan.tokens_per_step / step:,.0f} tokens/s"
    )
    if t.num_steps is None:
        return f"{rate}; train.num_steps=None (one epoch) and no data to count it: 1000 steps take {_days(1000 * step)}"
    return f"{rate}; {t.num_steps:,} steps ({t.steps_source}) take {_days(t.num_steps * step)}"


def _flops(rate: float) -> str:
    return f"{rate / 1e12:,.0f} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:,.0f} GFLOP/s"


def _days(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _notes(plan: Plan) -> list[str]:
    notes = [
        f"note: XLA's figures are the CPU compiler's, for a mesh of {plan.devices} fake CPU devices, attention xla"
        " (cuDNN attention is not available to it)"
    ]
    if plan.device.platform != "cpu":
        notes.append(
            "note: a GPU's compiler fuses and schedules differently: the CPU's keeps bfloat16 values in float32, runs"
            " remat's recomputation early and keeps xla attention's T x T probabilities, so its figure is an upper"
            " bound there; the analytic model was within 3% of an H100's measured peak (BENCHMARKS.md, 'Memory plan')"
        )
    return notes


# The command
# ------------------------------------------------------------------------------------------------------------------

USAGE = "jaxgpt plan --config=F [--config.key=value ...] [--devices=8] [--device=h100|h200|a100|cpu|MEMORY_GB]"


def flag_values(argv: list[str]) -> flags.FlagValues:
    """The command's flags, in their own FlagValues: `jaxgpt train`'s --config mechanism without its global flags.
    argv: what they will parse, from which the config flag defines its --config.key overrides (else sys.argv)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "a config file (configs/*.py)", flag_values=fv, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_integer("devices", DEFAULT_DEVICES, "devices of the run: the mesh spans them", flag_values=fv)
    flags.DEFINE_string("device", "h100", "h100 | h200 | a100 | cpu | a GPU's memory in GB", flag_values=fv)
    flags.DEFINE_float("mfu", 0.45, "model FLOPs utilisation the step time assumes", flag_values=fv)
    flags.DEFINE_float("headroom", 0.1, "fraction of the device's memory kept free", flag_values=fv)
    return fv


def parse(argv: list[str]) -> flags.FlagValues:
    """argv (without the command) parsed; a bad flag or config key is a ConfigError naming it."""
    check_overrides(argv)
    argv = ["jaxgpt plan", *argv]
    fv = flag_values(argv)
    try:
        rest = fv(argv)
    except flags.Error as e:
        raise ConfigError(str(e)) from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments {rest[1:]}; usage: {USAGE}")
    if fv.config is None:
        raise ConfigError(f"--config is required; usage: {USAGE}")
    check_int("--devices", fv.devices)
    if not 0 < fv.mfu <= 1:
        raise ConfigError(f"--mfu={fv.mfu} must be in (0, 1]")
    if not 0 <= fv.headroom < 1:
        raise ConfigError(f"--headroom={fv.headroom} must be in [0, 1)")
    return fv


def cpu_devices(n: int) -> list | None:
    """n CPU devices to compile for: this process gets exactly n when JAX has not started yet; None when it started
    with fewer (then a fresh process must plan)."""
    try:  # JAX takes the count only before its first operation, and says so with a RuntimeError
        jax.config.update("jax_num_cpu_devices", n)
        jax.config.update("jax_platforms", "cpu")  # a GPU in this machine stays untouched
    except RuntimeError:
        pass
    cpus = jax.devices("cpu")
    return cpus[:n] if len(cpus) >= n else None


def entry(argv: list[str]) -> None:
    """`jaxgpt plan ARGS` (= python -m jaxgpt.plan ARGS)."""
    from jaxgpt.cli import clean_errors

    if {"--help", "-h", "--helpfull"} & set(argv):
        print(f"usage: {USAGE}\n\n{__doc__}\n{flag_values([]).get_help()}")
        return
    with clean_errors():
        fv = parse(argv)
        target = device(fv.device, fv.devices)
        cpus = cpu_devices(fv.devices)
        if cpus is None:
            env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(fv.devices), "JAX_PLATFORMS": "cpu"}
            raise SystemExit(subprocess.run([sys.executable, "-m", "jaxgpt.plan", *argv], env=env).returncode)
        plan = make(fv.config, cpus, target, fv.mfu, fv.headroom)
    print(render(plan, config_flags.get_config_filename(fv["config"])))


if __name__ == "__main__":
    entry(sys.argv[1:])
