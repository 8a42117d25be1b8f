"""How verify latency grows with tree nodes, measured on this machine (the node budget built on it:
:mod:`quickdraft.sizing`).

Wide verification is nearly free on some machines (bfloat16 on a CPU with
native bf16: 8 tokens cost about what 1 costs) and expensive on others, so the
best tree size depends on the machine, as in parallel prompt decoding. This
module

* measures, once per model, dtype, thread count and machine, how long one
  target forward pass takes for a draft of n nodes (plus the root), and caches
  the profile as JSON under ``paths.profiles_dir()``
  (:func:`load_or_measure`, lazy: only a tree drafter asking for a budget
  triggers it; a couple of seconds for the embedded model);
* from which :mod:`quickdraft.sizing` chooses the node budget that maximises
  expected emitted tokens per second.

Counting: ``nodes`` is the number of draft nodes; a verify pass feeds
``nodes + 1`` tokens (the root too). ``latency(0)`` is a plain decoding step.

Context: a pass's attention reads every cached token, so a tree costs more
after a long prompt (bfloat16 here: 32 nodes cost 1.6 plain steps after 128
tokens, 1.9 after 600). The profile is measured at two context lengths and
``latency(n, context)`` is linear in the context between and beyond them.

>>> profile = LatencyProfile(key=None, nodes=(0, 8, 64), seconds=(0.020, 0.022, 0.050))
>>> round(profile.latency(4), 4), round(profile.latency(128), 4)
(0.021, 0.082)
>>> longer = LatencyProfile(key=None, nodes=(0, 8), seconds=(0.020, 0.022), context=128,
...                         long_context=1128, long_seconds=(0.030, 0.042))
>>> round(longer.latency(8, context=628), 4), round(longer.latency(8), 4)
(0.032, 0.022)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch

from .paths import profiles_dir

log = logging.getLogger(__name__)

PROFILE_NODES = (0, 1, 2, 4, 8, 16, 32, 64)  # draft sizes measured (0 = a plain decoding step)
PROFILE_VERSION = 7  # 7: keyed by the CPU's kernels and the tree layout; 2: the quiet flag; 3: a second, longer context; 4: exact tree layout (copies of some nodes); 5: logits stay in the model dtype; 6: copies of nodes spread in the cache, not computed
PROFILE_CONTEXTS = (128, 1024)  # context lengths (cached tokens) the passes are timed at


# ------------------------------------------------------------------ the profile


@dataclass(frozen=True)
class ProfileKey:
    """What a latency profile depends on. ``architecture`` hashes the model's shape."""

    model: str
    architecture: str
    dtype: str
    threads: int
    machine: str
    torch: str
    kernels: str = ""  # which CPU kernels torch runs here (cpu_kernels()): CPUs of one model name differ
    layout: str = ""  # how tree passes are laid out (TargetModel.layout): it sets how many keys a pass has

    def filename(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model)[:60]
        return f"{slug}-{self.dtype}-t{self.threads}-{digest}.json"


@dataclass(frozen=True)
class LatencyProfile:
    """Seconds of one verify pass per draft size: ``seconds[i]`` for ``nodes[i]`` draft nodes.

    nodes: increasing draft sizes (0 = the root alone, a plain decoding step).
    context: cached tokens before the timed passes. long_seconds: the same
    sizes timed after ``long_context`` cached tokens (None: not measured, the
    context is then ignored).
    """

    key: ProfileKey | None
    nodes: tuple[int, ...]
    seconds: tuple[float, ...]
    quiet: bool = True  # measured on an otherwise idle machine (else re-measured when it is)
    context: int = PROFILE_CONTEXTS[0]
    long_context: int | None = None
    long_seconds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        assert len(self.nodes) == len(self.seconds) >= 2, "need at least two measured sizes"
        assert all(a < b for a, b in zip(self.nodes, self.nodes[1:])), "nodes must increase"
        assert all(s > 0 for s in self.seconds), "latencies must be positive"
        if self.long_seconds is not None:
            assert self.long_context is not None and self.long_context > self.context, "long_context > context"
            assert len(self.long_seconds) == len(self.seconds), "one long-context time per size"

    @cached_property
    def fitted(self) -> tuple[float, ...]:
        """The measurements made non-decreasing in the draft size (pool adjacent violators).

        A bigger pass never really costs less; a dip is timing noise, and
        smoothing it keeps one lucky measurement from steering the choice.

        >>> LatencyProfile(key=None, nodes=(0, 1, 2, 4), seconds=(1.0, 3.0, 1.0, 4.0)).fitted
        (1.0, 2.0, 2.0, 4.0)
        """
        blocks: list[list[float]] = []  # [sum, count]
        for value in self.seconds:
            blocks.append([value, 1])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, count = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += count
        return tuple(total / count for total, count in blocks for _ in range(int(count)))

    @cached_property
    def per_token(self) -> tuple[float, ...]:
        """Extra seconds per cached token for each size (never negative, never falling with the size)."""
        if self.long_seconds is None:
            return tuple(0.0 for _ in self.nodes)
        long = LatencyProfile(key=None, nodes=self.nodes, seconds=self.long_seconds).fitted
        span = self.long_context - self.context
        slopes = [max((b - a) / span, 0.0) for a, b in zip(self.fitted, long)]
        return tuple(max(slopes[: i + 1]) for i in range(len(slopes)))

    def latency(self, nodes: int, context: int | None = None) -> float:
        """Seconds for a draft of ``nodes`` nodes after ``context`` cached tokens (None: the profile's own).

        Piecewise linear in ``nodes`` through :attr:`fitted`, extrapolated;
        linear in the context (:attr:`per_token`) above the profile's own
        context, and the profile's own time below it.
        """
        value = self._interp(self.fitted, nodes)
        if context is None or self.long_seconds is None or context <= self.context:
            return value  # shorter contexts are not extrapolated (bigger trees must never look cheaper)
        return value + self._interp(self.per_token, nodes) * (context - self.context)

    def _interp(self, ys: Sequence[float], nodes: int) -> float:
        xs = self.nodes
        i = 1
        while i < len(xs) - 1 and xs[i] < nodes:
            i += 1
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        value = y0 + (y1 - y0) * (nodes - x0) / (x1 - x0)
        return max(value, min(ys))  # never below the smallest value

    def to_json(self) -> dict:
        return {"version": PROFILE_VERSION, "key": asdict(self.key) if self.key else None,
                "nodes": list(self.nodes), "seconds": list(self.seconds), "quiet": self.quiet,
                "context": self.context, "long_context": self.long_context,
                "long_seconds": None if self.long_seconds is None else list(self.long_seconds)}

    @classmethod
    def from_json(cls, data: dict) -> LatencyProfile:
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')!r}, expected {PROFILE_VERSION}")
        key = ProfileKey(**data["key"]) if data.get("key") else None
        long = data.get("long_seconds")
        return cls(key=key, nodes=tuple(int(n) for n in data["nodes"]),
                   seconds=tuple(float(s) for s in data["seconds"]), quiet=bool(data.get("quiet", True)),
                   context=int(data.get("context", PROFILE_CONTEXTS[0])),
                   long_context=None if data.get("long_context") is None else int(data["long_context"]),
                   long_seconds=None if long is None else tuple(float(s) for s in long))


def machine_name(device: torch.device | str = "cpu") -> str:
    """The processor that runs the model: the GPU's name, else the CPU model and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{cpu} x{os.cpu_count()}"


def cpu_kernels(device: torch.device | str = "cpu") -> str:
    """Which kernels torch picks on this CPU: its vector ISA (``ATEN_CPU_CAPABILITY`` can lower it) and
    whether oneDNN runs bfloat16 natively. Two machines with the same CPU model name can differ (AVX2-only
    and AVX-512 AMD EPYCs here), and with them the rounding of every pass."""
    if torch.device(device).type != "cpu":
        return ""
    onednn_bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return f"aten={torch.backends.cpu.get_cpu_capability()},onednn_bf16={int(onednn_bf16)}"


def profile_key(target) -> ProfileKey:
    """The cache key of a :class:`~quickdraft.models.TargetModel` on this machine, now."""
    config = target.config
    shape = {name: getattr(config, name, None) for name in (
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size")}
    architecture = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return ProfileKey(
        model=str(target.name), architecture=architecture, dtype=str(target.dtype).replace("torch.", ""),
        threads=int(getattr(target, "threads", None) or torch.get_num_threads()), machine=machine_name(target.device),
        torch=torch.__version__, kernels=str(getattr(target, "kernels", None) or cpu_kernels(target.device)),
        layout=str(getattr(target, "layout", None) or ""),
    )


def measure_latency(target, nodes: Sequence[int] = PROFILE_NODES, *, contexts: Sequence[int] = PROFILE_CONTEXTS,
                    budget_s: float = 3.0, max_rounds: int = 5) -> LatencyProfile:
    """Time verify passes of tree drafts of each size on this machine, after a short and a long context.

    For each context length (at most two; one when the model's context is too
    short for the second), a prefix of that many tokens is prefilled once;
    then rounds of one forward per size (interleaved, so a busy spell hits
    every size alike) run until the context's share of ``budget_s`` is spent
    (at least one round). Each size keeps its fastest time: the machine's
    cost, not the noise of other processes. Drafts are binary trees, so the
    tree attention path is what is timed. The profile is marked not
    ``quiet`` when other processes kept the CPU busy.
    """
    quiet = machine_is_quiet(target.device)
    cuda = torch.device(target.device).type == "cuda"
    nodes = sorted({int(n) for n in nodes if 0 <= n < target.max_context - 2})
    room = target.max_context - max(nodes) - 2
    lengths = sorted({max(1, min(int(c), room)) for c in contexts})[:2]
    vocab = int(target.vocab_size)
    timed = [_time_sizes(target, nodes, length, budget_s / len(lengths), max_rounds, cuda, vocab)
             for length in lengths]
    return LatencyProfile(key=profile_key(target), nodes=tuple(nodes), seconds=timed[0],
                          quiet=quiet and machine_is_quiet(target.device), context=lengths[0],
                          long_context=lengths[1] if len(lengths) > 1 else None,
                          long_seconds=timed[1] if len(lengths) > 1 else None)


def _time_sizes(target, nodes: list[int], context: int, budget_s: float, max_rounds: int, cuda: bool,
                vocab: int) -> tuple[float, ...]:
    """The fastest seconds of a verify pass of each size after ``context`` cached tokens."""
    prefix = [(7 + 13 * i) % vocab for i in range(context)]
    cache = target.new_cache()
    target.prefill(prefix, cache)
    base = len(cache)

    def one_pass(n: int) -> float:
        tokens = [(11 + 17 * i) % vocab for i in range(n + 1)]
        parents = tuple((i + 1) // 2 for i in range(n))  # node i + 1 under node (i + 1) // 2: a binary tree
        start = time.perf_counter()
        target.forward(tokens, cache, parents)
        if cuda:
            torch.cuda.synchronize(target.device)  # kernels run asynchronously
        elapsed = time.perf_counter() - start
        cache.truncate(base)
        return elapsed

    one_pass(nodes[-1])  # warm-up: allocations, kernels, caches
    one_pass(nodes[0])
    best = {n: math.inf for n in nodes}
    deadline = time.perf_counter() + budget_s
    for _ in range(max_rounds):
        for n in nodes:
            best[n] = min(best[n], one_pass(n))
        if time.perf_counter() >= deadline:
            break
    return tuple(best[n] for n in nodes)


def machine_is_quiet(device: torch.device | str = "cpu") -> bool:
    """False when other work loads the CPU (1-minute load above the core count plus our own run)."""
    if torch.device(device).type != "cpu" or not hasattr(os, "getloadavg"):
        return True
    return os.getloadavg()[0] <= (os.cpu_count() or 1) + 1.0


def load_or_measure(target, *, directory: Path | None = None, refresh: bool = False) -> LatencyProfile:
    """The cached profile of ``target`` on this machine, measured and saved on first use.

    A profile measured while the machine was busy is used until a later call
    finds the machine quiet, which measures it again.
    """
    if not getattr(target, "profiling", True):  # loaded with profile=False: nothing timed, nothing written
        return generic_profile()
    key = profile_key(target)
    path = (directory or profiles_dir()) / key.filename()
    if path.is_file() and not refresh:
        try:
            profile = LatencyProfile.from_json(json.loads(path.read_text()))
            if profile.key == key and (profile.quiet or not machine_is_quiet(target.device)):
                return profile
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            log.warning("ignoring unreadable latency profile %s: %s", path, exc)
    log.info("measuring verify latency of %s (%s, %d threads) once for this machine", key.model, key.dtype,
             key.threads)
    profile = measure_latency(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
        json.dump(profile.to_json(), out, indent=1)
    os.replace(out.name, path)
    return profile


def generic_profile(step_s: float = 0.02) -> LatencyProfile:
    """A latency shape assumed, not measured: a pass of n nodes costs ``1 + log2(1 + n) / 4`` plain steps
    (float32 on a CPU); drafters that learn from the steps they see correct it.

    >>> round(generic_profile().latency(8) / generic_profile().latency(0), 3)
    1.792
    """
    return LatencyProfile(key=None, nodes=PROFILE_NODES,
                          seconds=tuple(step_s * (1 + math.log2(1 + n) / 4) for n in PROFILE_NODES))


__all__ = [
    "LatencyProfile", "PROFILE_NODES", "ProfileKey", "generic_profile", "load_or_measure", "machine_is_quiet",
    "machine_name", "measure_latency", "profile_key", "profiles_dir",
]
