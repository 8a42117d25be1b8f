"""Where quickdraft keeps what it makes: converted models, tokenizers, machine profiles and checks."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models and machine profiles live (``QUICKDRAFT_CACHE``, else the user's cache folder)."""
    if os.environ.get("QUICKDRAFT_CACHE"):
        return Path(os.environ["QUICKDRAFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quickdraft"


def profiles_dir() -> Path:
    """Where latency profiles and exactness checks are kept, per machine."""
    return cache_dir() / "profiles"


__all__ = ["cache_dir", "profiles_dir"]
