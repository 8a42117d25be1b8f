"""quickdraft: faster LLM decoding that never changes what the model generates."""

from .drafters import Draft, DraftContext, Drafter, StepOutcome, get_method, methods, register
from .engine import Engine, GenerationResult, Stats, load
from .errors import QuickdraftError
from .models import ALIASES, DEFAULT_MODEL, TargetModel, load_model
from .sampling import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "ALIASES", "DEFAULT_MODEL", "Draft", "DraftContext", "Drafter", "Engine", "GenerationResult",
    "QuickdraftError", "SamplingParams", "Stats", "StepOutcome", "TargetModel", "get_method", "load",
    "load_model", "methods", "register",
]
