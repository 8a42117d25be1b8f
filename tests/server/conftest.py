"""Fixtures for the server tests: real uvicorn servers on 127.0.0.1 (free ports), run in a thread."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Sequence

import httpx
import pytest
import torch

from quickdraft import load
from quickdraft.engine import Engine
from quickdraft.server import ServerConfig, running
from tests.conftest import make_tiny_model, make_tiny_tokenizer


def serving(engines: Sequence[Engine], config: ServerConfig):
    """Run the app on a free loopback port; yield its base URL; shut it down (lifespan included)."""
    return running(engines, config)


def metric(base_url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    text = httpx.get(f"{base_url}/metrics", headers=headers).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return 0.0


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Poll until ``condition()`` holds (not a timing assertion: the deadline only bounds a failure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="session")
def tiny_target(tiny_dir):
    """The tiny random model, loaded once; servers build their engines on it."""
    return load(str(tiny_dir), dtype="float32").target


@pytest.fixture(scope="session")
def endless_dir(tmp_path_factory) -> Path:
    """A tiny model with a long context whose greedy decoding never ends by itself.

    Its EOS row of the output layer is zero, so the EOS logit is exactly 0 while
    the maximum of the 258 other random logits is positive: greedy generation
    runs until max_tokens, long enough to disconnect in the middle.
    """
    path = tmp_path_factory.mktemp("endless-model")
    model = make_tiny_model(max_positions=8192)
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id].zero_()
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def endless_target(endless_dir):
    return load(str(endless_dir), dtype="float32").target
