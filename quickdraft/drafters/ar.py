"""``ar``: plain autoregressive decoding, the same loop with an empty draft."""

from .base import Drafter
from .registry import BuildContext, register


@register("ar", lossless=True, description="plain autoregressive decoding (the baseline: one target pass per token)")
def build(ctx: BuildContext) -> Drafter:
    return Drafter()
