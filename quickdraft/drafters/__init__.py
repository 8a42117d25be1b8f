"""Drafters, one module each; each registers itself by name in :mod:`.registry`.

Import order is registration order, which is the order ``quickdraft methods`` lists.
"""

from . import ar as _ar  # noqa: F401  (registers "ar")
from . import pld as _pld  # noqa: F401  (registers "pld")
from . import pld_tree as _pld_tree  # noqa: F401  (registers "pld-tree")
from . import recycle as _recycle  # noqa: F401  (registers "recycle")
from . import ngram as _ngram  # noqa: F401  (registers "ngram")
from . import lookahead as _lookahead  # noqa: F401  (registers "lookahead")
from . import rest as _rest  # noqa: F401  (registers "rest")
from . import draft_model as _draft_model  # noqa: F401  (registers "draft")
from . import swift as _swift  # noqa: F401  (registers "swift")
from . import early_exit as _early_exit  # noqa: F401  (registers "early-exit")
from . import ppd as _ppd  # noqa: F401  (registers "ppd")
from . import heads as _heads  # noqa: F401  (registers "heads")
from . import eagle as _eagle  # noqa: F401  (registers "eagle")
from . import auto as _auto  # noqa: F401  (registers "auto")
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .pld import PromptLookup, find_continuation
from .registry import BuildContext, MethodSpec, build_drafter, get_method, methods, register

__all__ = [
    "BuildContext", "Draft", "DraftContext", "Drafter", "EMPTY_DRAFT", "MethodSpec", "PromptLookup",
    "StepOutcome", "build_drafter", "find_continuation", "get_method", "methods", "register",
]
