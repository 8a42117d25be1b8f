"""``ar``: plain autoregressive decoding, the same loop with an empty draft."""

from .base import Drafter
from .registry import BuildContext, register


@register("ar", order=0, description="plain autoregressive decoding (the baseline: one target pass per token)")
def build(ctx: BuildContext) -> Drafter:
    return Drafter()
