"""Hardware-aware draft size: how verify latency grows with tree nodes, and the node budget to use.

Wide verification is nearly free on some machines (bfloat16 on a CPU with
native bf16: 8 tokens cost about what 1 costs) and expensive on others, so the
best tree size depends on the machine, as in parallel prompt decoding. This
module

* measures, once per model, dtype, thread count and machine, how long one
  target forward pass takes for a draft of n nodes (plus the root), and caches
  the profile as JSON under ``paths.profiles_dir()``
  (:func:`load_or_measure`, lazy: only a tree drafter asking for a budget
  triggers it; a couple of seconds for the embedded model);
* chooses the node budget that maximises expected emitted tokens per second,
  ``(1 + accepted(n)) / latency(n)`` (:func:`choose_node_budget`, pure), from a
  prior (:func:`node_budget`) or from running acceptance statistics
  (:class:`AdaptiveNodeBudget`).

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
>>> choose_node_budget(profile.latency, [0.0, 0.6, 0.9, 1.1, 1.3, 1.4, 1.5, 1.55, 1.6], candidates=(1, 2, 4, 8))
8
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
from typing import Callable, Sequence

import torch

from .paths import profiles_dir

log = logging.getLogger(__name__)

PROFILE_NODES = (0, 1, 2, 4, 8, 16, 32, 64)  # draft sizes measured (0 = a plain decoding step)
# Node budgets to choose among: fine steps where trees usually land (with doublings only, the n-gram
# drafter's budget settled between 4 and 8 nodes, below the best fixed size, 10; see AdaptiveNodeBudget).
CANDIDATES = (1, 2, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64)
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


# ------------------------------------------------------------------ choosing a size


def prior_expected_accepted(nodes: int) -> float:
    """Accepted draft tokens expected from a ``nodes``-node draft before any statistics.

    Half a token per doubling of the tree (0.5 at 1 node, 2 at 15, 3 at 63):
    a cautious, diminishing-returns guess that running statistics replace.
    """
    return 0.5 * math.log2(1 + nodes)


def choose_node_budget(latency: Callable[[int], float], expected_accepted: Sequence[float],
                       candidates: Sequence[int] = CANDIDATES) -> int:
    """The candidate draft size with the most expected emitted tokens per second.

    latency(n): seconds of a verify pass with n draft nodes.
    expected_accepted[n]: expected accepted draft tokens with n nodes (index 0..N);
        candidates beyond the list are skipped. Each pass also emits one
        recovered or bonus token, hence ``(1 + accepted) / latency``. Ties go
        to the smaller size.

    >>> flat = lambda n: 1.0                      # free verification: the biggest tree
    >>> choose_node_budget(flat, [0, 1, 1.5, 1.8, 2.0], candidates=(1, 2, 4))
    4
    >>> steep = lambda n: 1.0 + n                 # every node costs a full pass
    >>> choose_node_budget(steep, [0, 1, 1.5, 1.8, 2.0], candidates=(1, 2, 4))
    1
    """
    best, best_rate = None, -math.inf
    for n in sorted(candidates):
        if n >= len(expected_accepted):
            continue
        rate = (1.0 + expected_accepted[n]) / latency(n)
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = n, rate
    if best is None:
        raise ValueError(f"no candidate in {list(candidates)} has an acceptance estimate")
    return best


def node_budget(target, *, default: int = 16, max_nodes: int = 64) -> int:
    """A node budget for tree drafts on this machine, from the latency profile and the prior.

    Measures the profile on first use (cached per model, dtype, threads and
    machine). ``default`` is returned for a target that cannot be profiled
    (None, or an object without ``forward``/``new_cache``, as in unit tests).
    """
    if target is None or not hasattr(target, "forward") or not hasattr(target, "new_cache"):
        return default
    profile = load_or_measure(target)
    prior = [prior_expected_accepted(n) for n in range(max_nodes + 1)]
    return choose_node_budget(profile.latency, prior, [c for c in CANDIDATES if c <= max_nodes])


def accepted_within(path: Sequence[int], nodes: int) -> int:
    """Accepted tokens had the draft been cut to its first ``nodes`` nodes.

    Valid for drafts built in priority order (their first m nodes are the
    draft they would make with budget m) and greedy acceptance, where the
    accepted path of the cut tree is the prefix of ``path`` inside it.

    >>> accepted_within((2, 5, 9), 6)
    2
    """
    count = 0
    for node in path:
        if node > nodes:
            break
        count += 1
    return count


class AdaptiveNodeBudget:
    """The node budget for the next draft, from a latency profile and running acceptance.

    The tokens expected from the first m nodes of a draft (:func:`accepted_within`)
    are estimated as a level times a product of growth factors: the level is
    the running mean of what the first node alone accepts, measured at every
    step; the factor of size m is the running ratio of what the first m nodes
    accepted to what the first m - 1 accepted, over the steps whose budget
    reached m (a product-limit estimate: each ratio compares two sizes on the
    same steps). All start from the prior. A large size is only measured in
    the steps that try it, which come in easy stretches (a translation) or on
    probes (every ``probe_every`` steps the next larger candidate is
    proposed); as ratios its measurements carry over to a hard stretch, where a
    plain running mean would have stayed high (too big trees), and back, where
    a mean measured in the hard stretch would have stayed low (the n-gram
    drafter's budget, so estimated, stuck at 2 nodes for a whole bench run
    after its first prompts: 1.86 tokens per pass against 2.13 at a fixed 10
    nodes). The estimate never falls as m grows (a draft's first m nodes hold
    its first m - 1), which the previous estimate, one ratio of m nodes to the
    first node per size, each over its own steps, did not ensure: it rated 16
    nodes below 12 and 24 above both in a bench run, and chose bigger trees
    than paid (builtin suite, interleaved: `ngram` 1.75x with it, 1.82x with
    this one, 1.83x at a fixed 8 nodes). Lives in a drafter, so it carries
    across the requests of an engine.

    >>> budget = AdaptiveNodeBudget(lambda n: 1.0 + n / 8, candidates=(1, 2, 4, 8))
    >>> for _ in range(50):
    ...     budget.record(budget.next_budget(), path=(1, 2, 3))   # the first 3 nodes always accepted
    >>> budget.choice()
    4

    latency(n) gives the seconds of an n-node pass; called as latency(n, context)
    when the drafter passes the context length (cached tokens) to
    :meth:`next_budget` (a profile's :meth:`LatencyProfile.latency` takes both).
    """

    def __init__(self, latency: Callable[..., float], *, candidates: Sequence[int] = CANDIDATES,
                 prior: Callable[[int], float] = prior_expected_accepted, prior_weight: float = 4.0,
                 min_rate: float = 0.02, probe_every: int = 8) -> None:
        self.latency = latency
        self.candidates = tuple(sorted(candidates))
        size = self.candidates[-1] + 1
        self._level = prior(1)  # running mean of what the first node accepts
        self._level_weight = prior_weight
        # growth of size m: running (accepted by m nodes, by m - 1 nodes) over the steps that reached m
        self._growth = [(1.0, 1.0)] * 2 + [(prior(m), prior(m - 1)) for m in range(2, size)]
        self._weight = [prior_weight] * size
        self.min_rate = min_rate
        self.probe_every = probe_every
        self.steps = 0

    @property
    def expected(self) -> list[float]:
        """Expected accepted tokens with the first m nodes, m = 0 .. max(candidates); never decreasing."""
        out = [0.0, self._level]
        for num, den in self._growth[2:]:
            out.append(out[-1] * max(1.0, num / den) if den > 1e-9 else out[-1])
        return out

    def choice(self, context: int | None = None) -> int:
        """The best candidate on current estimates (after ``context`` cached tokens, if given)."""
        latency = self.latency if context is None else (lambda n: self.latency(n, context))
        return choose_node_budget(latency, self.expected, self.candidates)

    def next_budget(self, context: int | None = None) -> int:
        """The budget for the next draft: the choice, or one size up on a probe step."""
        best = self.choice(context)
        if self.probe_every and self.steps % self.probe_every == self.probe_every - 1:
            larger = [c for c in self.candidates if c > best]
            return larger[0] if larger else best
        return best

    def record(self, budget: int, path: Sequence[int]) -> None:
        """One verified draft made under ``budget`` nodes, with accepted node path ``path``."""
        self.steps += 1
        if budget < 1:
            return
        accepted = accepted_within(path, 1)  # accepted_within(path, m), advanced as m grows
        self._level_weight += 1.0
        self._level += max(1.0 / self._level_weight, self.min_rate) * (accepted - self._level)
        for m in range(2, min(budget, len(self._growth) - 1) + 1):
            before = accepted
            while accepted < len(path) and path[accepted] <= m:
                accepted += 1
            self._weight[m] += 1.0
            rate = max(1.0 / self._weight[m], self.min_rate)
            num, den = self._growth[m]
            self._growth[m] = (num + rate * (accepted - num), den + rate * (before - den))


def adaptive_node_budget(target, *, max_nodes: int = 64, extra: int = 0) -> AdaptiveNodeBudget | None:
    """An :class:`AdaptiveNodeBudget` on ``target``'s latency profile (measured once per machine).

    extra: inputs fed with every draft besides its nodes (PPD's prompt tokens),
    charged as nodes. None for a target that cannot be profiled (see :func:`node_budget`).
    """
    if target is None or not hasattr(target, "forward") or not hasattr(target, "new_cache"):
        return None
    profile = load_or_measure(target)
    latency = profile.latency if not extra else (lambda n, context=None: profile.latency(n + extra, context))
    return AdaptiveNodeBudget(latency, candidates=[c for c in CANDIDATES if c <= max_nodes])



__all__ = [
    "AdaptiveNodeBudget", "CANDIDATES", "adaptive_node_budget", "LatencyProfile", "PROFILE_NODES", "ProfileKey", "accepted_within",
    "choose_node_budget", "load_or_measure", "machine_is_quiet", "machine_name", "measure_latency", "node_budget",
    "prior_expected_accepted", "profile_key", "profiles_dir",
]
