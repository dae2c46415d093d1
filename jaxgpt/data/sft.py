"""Loss masks for instruction tuning: which targets lie inside an assistant turn.

A chat template marks each assistant reply with a begin and an end token (Modalities' `b_include_to_loss_token` and
`e_include_to_loss_token`, e.g. "^" and "$"). A target counts toward the loss when it lies strictly between a begin
and the next end marker; the markers themselves never count. This is Modalities' `LossMaskingCollateFnWrapper` on
every row where that wrapper is defined, with three differences, all per row:

- Rows are independent. Modalities looks for the markers in the whole batch, so one row without them masks the whole
  batch (no begin anywhere) or none of it; here each row stands alone.
- A row whose first marker is an end marker starts inside an assistant turn (an overlapping window cut into a reply):
  its targets before that end count. Modalities raises on such a row.
- A row that ends inside an assistant turn (a reply cut by the window or by truncation) counts its targets after the
  last begin. Modalities drops the whole batch's targets when no end marker is in the batch.
A row without any marker counts nothing: it may be a user turn or the middle of a very long reply, and which one
cannot be known from the row.

`loss_mask` takes numpy or jax arrays and returns the same kind; it runs inside the jitted train and eval steps.
"""

from __future__ import annotations

import numpy as np


def _namespace(x):
    if isinstance(x, np.ndarray):
        return np, np.maximum.accumulate
    import jax
    import jax.numpy as jnp

    return jnp, lambda a, axis: jax.lax.cummax(a, axis=axis)


def loss_mask(targets_BxS, begin_id: int, end_id: int):
    """bool [B, S]: True where target [b, s] lies strictly inside an assistant turn of its own row (module docstring).

    targets_BxS: int token ids [B, S]; begin_id, end_id: the two marker ids, different."""
    if begin_id == end_id:
        raise ValueError(f"the begin and end markers must differ, both are id {begin_id}")
    xp, cummax = _namespace(targets_BxS)
    B, S = targets_BxS.shape
    is_begin_BxS, is_end_BxS = targets_BxS == begin_id, targets_BxS == end_id
    is_marker_BxS = is_begin_BxS | is_end_BxS
    position_BxS = xp.broadcast_to(xp.arange(S), (B, S))
    # the position of the latest marker at or before s (-1: none yet), then strictly before s
    latest_BxS = cummax(xp.where(is_marker_BxS, position_BxS, -1), axis=1)
    before_BxS = xp.concatenate([xp.full((B, 1), -1, latest_BxS.dtype), latest_BxS[:, :-1]], axis=1)
    after_begin_BxS = xp.take_along_axis(is_begin_BxS, xp.maximum(before_BxS, 0), axis=1)
    # no marker before s: inside a turn exactly when the row's first marker ends one
    first_B = xp.argmax(is_marker_BxS, axis=1)
    starts_inside_B = xp.take_along_axis(is_end_BxS, first_B[:, None], axis=1)[:, 0]
    inside_BxS = xp.where(before_BxS >= 0, after_begin_BxS, starts_inside_B[:, None])
    return inside_BxS & ~is_marker_BxS
