"""``swift``: self-speculation by layer skipping (SWIFT, Xia et al. 2024), training-free.

The draft is the target model with some decoder layers skipped; the first and
the last layer always run. Candidate skip sets (evenly spread, a late block, a
middle block; skipping an eighth up to half of the layers) are measured
on the first prompt and re-ranked by the acceptance they yield
(:mod:`.self_spec`). Option ``skip`` (e.g. ``"4,6,8"``) fixes the skipped layers.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuickdraftError
from .base import Drafter
from .draft_model import drafter_settings
from .lm import check_self_spec_support
from .registry import BuildContext, register
from .self_spec import SelfSpecDrafter, parse_layers


def swift_candidates(total: int) -> list[tuple[int, ...]]:
    """Layer sets to *run* for a model of ``total`` layers, each skipping some middle layers.

    >>> swift_candidates(2)                 # tiny models: skip any one layer
    [(1,), (0,)]
    >>> all(c[0] == 0 and c[-1] == 7 for c in swift_candidates(8))
    True
    """
    if total < 4:
        return [tuple(i for i in range(total) if i != s) for s in range(total)] if total > 1 else []
    out: list[tuple[int, ...]] = []
    for ratio in (0.125, 0.25, 0.375, 0.5):
        count = min(max(1, round(ratio * total)), total - 2)
        spread = set(np.linspace(1, total - 2, count).round().astype(int).tolist())
        late = set(range(total - 1 - count, total - 1))
        start = max(1, (total - count) // 2)
        middle = set(range(start, min(start + count, total - 1)))
        for skip in (spread, late, middle):
            keep = tuple(i for i in range(total) if i not in skip)
            if keep not in out:
                out.append(keep)
    return out


@register("swift", order=8,
          source={"sized": False, "needs": "sources"},  # opt-in: self-speculation costs much of a pass
          needs=("layers",), description="self-speculation: the model drafts with some layers skipped, chosen by measured acceptance")
def build(ctx: BuildContext) -> Drafter:
    model = ctx.target.model
    check_self_spec_support(model)
    total = len(model.model.layers)
    if total < 2:
        raise QuickdraftError("swift needs a model with at least 2 layers")
    skip = ctx.options.get("skip")
    if skip is not None:
        skipped = parse_layers(skip, total)
        run = tuple(i for i in range(total) if i not in skipped)
        if not run or len(run) == total:
            raise QuickdraftError(f"skip must leave some but not all of the {total} layers, got {skip!r}")
        candidates = [run]
    else:
        candidates = swift_candidates(total)
    return SelfSpecDrafter(model, candidates, **drafter_settings(ctx))
