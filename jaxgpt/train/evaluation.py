"""Evaluation during training: the mean token loss over the validation windows (and per data.val_mixture component),
when it is due, and its cost."""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable

from jaxgpt import sharding
from jaxgpt.data.loader import pipeline
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.distributed import lead_says
from jaxgpt.evals.run import flat_metrics


def evaluate(
    eval_step,
    params,
    source: PackedWindowSource,
    eval_batch: int,
    mesh,
    max_batches: int,
    on_batch: Callable[[], None] = lambda: None,
) -> dict:
    """Mean token loss over the validation windows (all of them, or the first `max_batches` batches when > 0);
    `on_batch()` after each batch (the progress bar)."""
    return scores(*loss_sums(eval_step, params, source, eval_batch, mesh, max_batches, on_batch))


def evaluate_sets(
    eval_step, params, sources: dict[str, PackedWindowSource], eval_batch: int, mesh, max_batches: int, on_batch
) -> dict:
    """`evaluate` over data.val_path ({"": its windows}); or over each data.val_mixture component, with
    "eval_loss/NAME" for each besides eval_loss over all their tokens together (max_batches: of each)."""
    if list(sources) == [""]:
        return evaluate(eval_step, params, sources[""], eval_batch, mesh, max_batches, on_batch)
    sums = {
        name: loss_sums(eval_step, params, src, eval_batch, mesh, max_batches, on_batch)
        for name, src in sources.items()
    }
    total = scores(math.fsum(s for s, _ in sums.values()), math.fsum(n for _, n in sums.values()))
    return {**total, **{f"eval_loss/{name}": scores(*s)["eval_loss"] for name, s in sums.items()}}


def loss_sums(eval_step, params, source: PackedWindowSource, eval_batch: int, mesh, max_batches: int, on_batch):
    """(sum of the token losses, tokens counted) over the validation windows, or their first `max_batches` batches."""
    loss_sum, num_tokens = 0.0, 0.0
    with pipeline.eval_batches(source, global_batch_size=eval_batch, sharding=sharding.batch_sharding(mesh)) as it:
        for batch in itertools.islice(it, max_batches or None):
            out = eval_step(params, batch)
            loss_sum += float(out["loss_sum"])
            num_tokens += float(out["num_tokens"])
            on_batch()
    return loss_sum, num_tokens


def scores(loss_sum: float, num_tokens: float) -> dict:
    """eval_loss (the mean token loss), eval_ppl and eval_tokens."""
    if not num_tokens:  # loss masks with no assistant target in the evaluated windows
        warnings.warn("evaluation counted no target (data.loss_mask_tokens): eval_loss is NaN", stacklevel=2)
        return {"eval_loss": math.nan, "eval_ppl": math.nan, "eval_tokens": 0.0}
    loss = loss_sum / num_tokens
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0)), "eval_tokens": num_tokens}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When a run evaluates, and on what."""

    every: int  # train.eval_every: evaluate at its multiples ...
    last: int  # ... and at the run's last step
    batches: int  # batches of one evaluation, all data.val_mixture components together (0: no validation data)
    eval_batch: int  # sequences per batch
    max_batches: int  # train.eval_steps (0: a full pass)
    tasks: int = 0  # train.eval_tasks: downstream tasks scored after the validation loss (0: none)
    task_tokens: int = 0  # tokens those tasks read per evaluation (each distinct context once)

    def due(self, step: int) -> bool:
        return (self.batches > 0 or self.tasks > 0) and (step % self.every == 0 or step == self.last)

    def cost(self, tokens_per_step: int, seq_len: int) -> str:
        """The banner's line on evaluation: on CPU a full validation pass can cost far more than a short run's steps."""
        if not self.batches and not self.tasks:
            return "evaluation: none (data.val_path is empty)"
        count = len(set(range(self.every, self.last + 1, self.every)) | {self.last})
        tokens = self.batches * self.eval_batch * seq_len
        what, hints = [], []
        if self.batches:
            what.append(f"{self.batches} batches of {self.eval_batch} seqs ({self._tokens(tokens, tokens_per_step)})")
            hints += [] if self.max_batches else ["train.eval_steps=N caps it at N batches"]
        if self.tasks:
            tasks = f"{self.tasks} downstream task{'s' * (self.tasks > 1)}"
            what.append(f"{tasks} ({self._tokens(self.task_tokens, tokens_per_step)})")
            hints.append("train.eval_tasks=NAME:KIND:PATH@N scores a task's first N requests")
        line = f"evaluation: {' and '.join(what)} every {self.every} steps and at the last: {count} in all"
        return "; ".join([line, *hints])

    @staticmethod
    def _tokens(tokens: int, tokens_per_step: int) -> str:
        return f"{tokens:,} tokens, the forward passes of {tokens / tokens_per_step:,.1f} steps' tokens"


class Evaluation:
    """Evaluating a run's params when its schedule says, into the recorder."""

    def __init__(
        self, schedule: Schedule, eval_step, sources: dict[str, PackedWindowSource], mesh, recorder, tasks=None
    ):
        """sources: Setup.val_sets; tasks: (Setup.tasks, the function from params to their GPT), or None."""
        self.schedule, self.eval_step, self.sources = schedule, eval_step, sources
        self.mesh, self.recorder, self.tasks = mesh, recorder, tasks

    def due(self, step: int) -> bool:
        return self.schedule.due(step)

    def __call__(self, step: int, params) -> None:
        s, got = self.schedule, {}
        with self.recorder.goodput.timing("eval"):
            if s.batches:
                with self.recorder.evaluating(step, s.batches) as on_batch:
                    got = evaluate_sets(
                        self.eval_step, params, self.sources, s.eval_batch, self.mesh, s.max_batches, on_batch
                    )
            if self.tasks is not None:
                task_set, model_of = self.tasks
                with self.recorder.evaluating(step, None) as on_batch:
                    results = task_set(model_of(params), batch_size=s.eval_batch, on_batch=lambda rows: on_batch())
                got.update(flat_metrics(results))
                self.recorder.record_tasks({name: r["sha256"] for name, r in results.items()})
        self.recorder.eval(step, got)

    def missed(self, start_step: int) -> bool:
        """Whether the resumed run must first do the evaluation of its start step. A stop signal at an eval step saves
        without evaluating, and a crash can land between a save and its evaluation: then metrics.jsonl (kept up to the
        resume step) lacks that eval. Only process 0 reads metrics.jsonl, and every process takes part in an eval."""
        missed = self.due(start_step) and start_step > 0 and start_step not in self.recorder.metrics.eval_steps
        return lead_says(missed)
