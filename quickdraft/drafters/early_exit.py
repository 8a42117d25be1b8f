"""``early-exit``: self-speculation from an early layer (Kangaroo / LayerSkip style), training-free.

The draft runs the first e decoder layers, then the model's own final norm and
LM head (no adapter, no extra weights). The exit layer e is chosen by
measurement among a few candidates between a quarter and three quarters of the
depth, then by the acceptance it yields (:mod:`.self_spec`); option
``exit_layer`` fixes it. Draft length stops adaptively on the draft's
confidence, as Kangaroo's does.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuickdraftError
from .base import Drafter
from .draft_model import drafter_settings
from .lm import check_self_spec_support
from .registry import BuildContext, register
from .self_spec import SelfSpecDrafter


def exit_candidates(total: int) -> list[int]:
    """Exit layers (how many layers run) to try for a model of ``total`` layers.

    >>> exit_candidates(30)
    [8, 10, 14, 16, 20, 22]
    >>> exit_candidates(2)
    [1]
    """
    raw = np.linspace(total / 4, 3 * total / 4, 6).round().astype(int).tolist()
    return sorted({min(max(1, e), total - 1) for e in raw})


@register("early-exit", order=9, source={"sized": False, "needs": "sources"},
          needs=("layers",), description="self-speculation: draft from an early layer through the model's own norm and LM head")
def build(ctx: BuildContext) -> Drafter:
    model = ctx.target.model
    check_self_spec_support(model)
    total = len(model.model.layers)
    if total < 2:
        raise QuickdraftError("early-exit needs a model with at least 2 layers")
    exit_layer = ctx.options.get("exit_layer")
    if exit_layer is not None:
        e = int(exit_layer)
        if not 1 <= e < total:
            raise QuickdraftError(f"exit_layer must be in 1..{total - 1}, got {exit_layer!r}")
        exits = [e]
    else:
        exits = exit_candidates(total)
    return SelfSpecDrafter(model, [tuple(range(e)) for e in exits], **drafter_settings(ctx))
