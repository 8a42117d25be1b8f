"""``auto``: every step, choose which drafters to ask and how much of their drafts to verify.

No single drafter wins everywhere: prompt lookup wins where text is copied
(summaries, RAG, code edits), token recycling and n-grams where the model's
own phrasing repeats, and on open-ended text drafting may not pay at all.
``auto`` decides per step, from what it has measured:

1. *Signal.* The prompt-lookup match length (:func:`~quickdraft.selection.match_length`),
   known before anything is drafted, picks the statistics bucket of
   lookup-style sources: a long match means the text is being copied. Other
   sources keep their statistics apart by whether their last draft's first
   token was right.
2. *Ask.* Sources (registered drafters that declare a :class:`~.registry.SourceSpec`) are ranked by what
   each added lately over the ones ranked before it (a plain step for the
   first), its drafting time included; a source is asked for a draft tree
   while that gain exceeds ``1 + margin``, or when its turn to be re-checked
   has come (probing spends at most ``probe_share`` of the time, so cheap
   sources are asked every step and costly ones now and then).
3. *Score and choose.* The drafts are merged into one tree (shared prefixes
   once, :func:`~quickdraft.drafters.combine.merge_drafts`); each node gets the
   probability of being accepted from running statistics
   (:class:`~quickdraft.selection.AcceptanceStats`), and the nodes verified
   are the n best for the n with the most expected tokens per second given the
   verify latency of n nodes on this machine
   (:class:`~quickdraft.selection.LatencyModel`, from :mod:`quickdraft.profile`)
   and the drafting time spent (:func:`~quickdraft.selection.best_size`).
   n = 0 is a plain step, chosen unless drafting beats it by ``margin``
   after the prediction is scaled by how well predictions held up lately
   (:class:`Trust`: realized over predicted speed of drafted steps, per
   bucket), so an optimistic estimate cannot keep auto slower than plain.
4. *Learn.* Every draft asked for, verified or not, is scored against the
   tokens the target then emits (:func:`~quickdraft.selection.resolve`), so
   a source that stops being accepted stops being chosen, and one that starts
   (a summary that starts copying) is picked up within a few steps. The
   latency model learns from the step times (the pass, acceptance, and the
   sources' learning). Drafters that learn from verification passes
   (recycling's matrix, the n-gram tables) see every step, chosen or not.
   Statistics live in the drafter, which the engine keeps per method and
   options, so they carry across requests (fixed memory, decayed counts).

Lossless: auto only chooses which tokens are proposed; the engine verifies
them as any draft. A draft that merges several sources is deterministic
(one-hot for speculative sampling, always valid); a single source's draft, or
the start of its chain, keeps its draft probabilities.

Options: ``sources`` (comma-separated; default pld-tree, recycle, ngram, eagle
when an adapter for the model is given or shipped (the shipped one also when a
heads adapter is given; not on a GPU, see :func:`source_names`), heads when one is given, rest with a ``datastore``
given, and draft with a ``draft_model``; lookahead,
swift and early-exit only when listed), ``max_nodes`` (32), ``margin`` (0: the trust
gate already charges what the predictions miss), ``probe_share`` (0.02), and
``prior`` (passed to the ngram and recycle sources: their starting statistics). Not
a source: ``ppd`` (auto picks the nodes to verify after merging, which would
leave its prompt tokens without their anchor nodes; ``ppd+ngram`` combines it).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import QuickdraftError
from ..selection import (
    BUCKETS, AcceptanceStats, Choice, LatencyModel, best_path_scores, best_size, match_bucket, match_length, node_features, path_scores,
    plausible, resolve,
)
from ..tree import children
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .combine import merge_drafts, part_view
from .registry import BuildContext, SourceSpec, get_method, register, sources

log = logging.getLogger(__name__)

INPUTS = ("draft_model", "datastore", "adapter", "prior")  # user inputs passed on to the sources that use them


GAIN_RATE = 0.2  # how fast a source's recent usefulness follows its drafts
MIN_ASK = 8  # nodes a source is asked for at least


class Source:
    """One drafter inside auto, and what auto knows about it.

    cost: running mean seconds of asking it for a draft.
    used: its recent most nodes verified in a step (decaying); it is asked
        for about twice that, at least ``MIN_ASK`` (fewer nodes draft faster,
        and when all it drafted was verified the next ask doubles).
    last_hit: whether its latest scored draft got the next token right. A
        source without a signal of its own keeps its statistics apart by it
        (accuracy comes in runs: text being copied or repeated).
    gain[bucket]: running mean of the speed-up its draft added to those of
        the sources ranked before it (the first: over a plain step), its
        drafting time included. Sources are ranked by it, and asked while it
        exceeds 1 + margin. Optimistic at first, so every source is tried
        (but a priming one, costly to keep ready, which has to prove itself in
        probes); a bucket not seen yet starts from the mean of those seen (a
        costly source found useless is not tried again in every bucket).
    last_asked: the step it was last asked.
    """

    def __init__(self, index: int, spec: SourceSpec, drafter: Drafter) -> None:
        self.index, self.spec, self.drafter, self.name = index, spec, drafter, spec.method
        self.cost = 0.0
        self.used = 4.0
        self.last_hit = False
        self.gain = np.full(BUCKETS, 1.0 if spec.primes else 2.0)
        self.seen = np.zeros(BUCKETS, dtype=bool)  # buckets whose gain was measured
        self.last_asked = -(10 ** 9)
        self.primed = False  # (primes) it observed the last step, to be asked at this one
        self.primed_s = 0.0  # seconds that took

    def gain_at(self, bucket: int) -> float:
        if self.seen[bucket] or not self.seen.any():
            return float(self.gain[bucket])
        return float(self.gain[self.seen].mean())

    def learn_gain(self, bucket: int, value: float) -> None:
        """One more measurement of the speed-up it added in ``bucket``."""
        if not self.seen[bucket]:
            self.gain[bucket] = self.gain_at(bucket)
            self.seen[bucket] = True
        self.gain[bucket] += GAIN_RATE * (value - self.gain[bucket])


class Trust:
    """How far auto's predictions of a drafted step's speed held up, per signal bucket: a calibration factor.

    Expected accepted tokens come from running statistics, and the nodes
    verified are those with the highest estimates, so predictions lean
    optimistic (and statistics learned on other text may not hold here). Each
    drafted step records the tokens it emitted, scaled to the predicted time
    (``tokens * predicted_s / seconds``), against the tokens predicted; the
    factor is their ratio of decayed sums with ``weight`` pseudo-tokens at
    1.0. A draft is verified only when its predicted gain times the factor
    beats a plain step. Plain steps fade the evidence (``fade``), so a bucket
    where drafting stopped paying is tried again later.

    >>> t = Trust(buckets=1)
    >>> t.factor(0)
    1.0
    >>> for _ in range(40): t.record(0, tokens=1, predicted=2.0, seconds=1.0, predicted_s=1.0)
    >>> round(t.factor(0), 2)       # half of what was predicted
    0.55
    >>> for _ in range(2000): t.fade_step(0)
    >>> round(t.factor(0), 2)       # long without drafting: back towards 1
    1.0
    """

    def __init__(self, buckets: int, *, weight: float = 4.0, decay: float = 0.95, fade: float = 0.995,
                 low: float = 0.25, high: float = 2.0) -> None:
        self.realized = np.zeros(buckets)
        self.predicted = np.zeros(buckets)
        self.weight, self.decay, self.fade, self.low, self.high = weight, decay, fade, low, high

    def factor(self, bucket: int) -> float:
        value = (self.realized[bucket] + self.weight) / (self.predicted[bucket] + self.weight)
        return float(min(max(value, self.low), self.high))

    def record(self, bucket: int, *, tokens: int, predicted: float, seconds: float, predicted_s: float) -> None:
        """A drafted step: ``tokens`` emitted in ``seconds``; ``predicted`` tokens in ``predicted_s`` were expected."""
        if seconds <= 0 or predicted_s <= 0:
            return
        self.realized[bucket] = self.decay * self.realized[bucket] + tokens * predicted_s / seconds
        self.predicted[bucket] = self.decay * self.predicted[bucket] + predicted

    def fade_step(self, bucket: int) -> None:
        """A plain step: the evidence about drafting in ``bucket`` ages."""
        self.realized[bucket] *= self.fade
        self.predicted[bucket] *= self.fade


@dataclass
class _Pending:
    """A draft waiting for the target's tokens to score it (see :func:`~quickdraft.selection.resolve`)."""

    source: int
    bucket: int
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depth: list[int]
    rank: list[int]
    start: int  # committed tokens when it was drafted
    kids: list[list[int]] = field(default_factory=list)  # children of each node
    recorded: int = 0  # decided nodes already counted


@dataclass
class _Asked:
    """A source asked this step: its draft, estimates, drafting time, and where its nodes were verified."""

    source: Source
    draft: Draft
    conditional: np.ndarray  # [n] P(accepted | parent accepted) per node
    elapsed: float  # seconds to draft it
    node_of: list[int] = field(default_factory=lambda: [0])  # verified node of its root and placed prefix


@dataclass
class _Step:
    final: Draft
    asked: dict[int, _Asked]
    sent: float
    bucket: int = 0
    choice: Choice | None = None  # the prediction for a drafted step
    draft_s: float = 0.0  # seconds spent drafting it


class Auto(Drafter):
    """Chooses among ``sources`` every step by expected goodput; see the module docstring.

    latency: the verify-latency model of this target on this machine.
    clock: seconds, for the drafting and step times (tests pass a fake one).
    """

    def __init__(self, sources: Sequence[tuple[SourceSpec, Drafter]], latency: LatencyModel, *, max_nodes: int = 32,
                 margin: float = 0.0, probe_share: float = 0.02, stats: AcceptanceStats | None = None,
                 max_pending: int = 256, clock: Callable[[], float] = time.perf_counter,
                 chains: bool = False) -> None:
        if not sources:
            raise ValueError("auto needs at least one source")
        if max_nodes < 1 or margin < 0 or not 0 <= probe_share <= 1:
            raise ValueError("need max_nodes >= 1, margin >= 0 and 0 <= probe_share <= 1")
        self.sources = [Source(i, spec, drafter) for i, (spec, drafter) in enumerate(sources)]
        self.latency = latency
        self.max_nodes = min(max_nodes, latency.max_nodes)
        self.margin, self.probe_share = margin, probe_share
        self.chains = chains  # the target verifies chains only (a tree's best path): choose among paths
        self.stats = stats or AcceptanceStats(len(self.sources), BUCKETS)
        self.trust = Trust(BUCKETS)
        self._signal = any(src.spec.signal for src in self.sources)
        self._bucket_cache = (-1, 0)  # (context length, its bucket)
        self._clock = clock
        self._pending: deque[_Pending] = deque(maxlen=max_pending)
        self._step_no = 0
        self._tokens: list[int] = []  # this request's committed tokens
        self._step: _Step | None = None
        self._report = self._empty_report()

    @property
    def wants_hidden(self) -> bool:  # type: ignore[override]
        return any(getattr(src.drafter, "wants_hidden", False) for src in self.sources)

    @property
    def wants_prompt_hidden(self) -> bool:  # type: ignore[override]
        return any(getattr(src.drafter, "wants_prompt_hidden", False) for src in self.sources)

    def _empty_report(self) -> dict[str, dict[str, int]]:
        return {name: {"chosen": 0, "nodes": 0, "accepted": 0} for name in ["plain", *(s.name for s in self.sources)]}

    def reset(self) -> None:
        """Forget the request (its tokens, undecided drafts, its report); keep what was learned."""
        self._pending.clear()
        self._bucket_cache = (-1, 0)
        for src in self.sources:
            src.primed = False
        self._tokens = []
        self._step = None
        self._report = self._empty_report()
        for src in self.sources:
            src.drafter.reset()

    def explain(self) -> dict[str, dict[str, int]]:
        """This request's choices: per source, steps it drafted for, nodes verified, tokens accepted."""
        return {name: dict(entry) for name, entry in self._report.items()}

    def observe_prompt(self, tokens, hidden) -> None:
        for src in self.sources:
            src.drafter.observe_prompt(tokens, hidden if getattr(src.drafter, "wants_prompt_hidden", False) else None)

    # ------------------------------------------------------------- propose

    def propose(self, context: DraftContext) -> Draft:
        if len(self._tokens) != len(context.tokens):  # a new request, or not the tokens we expected
            self._tokens = context.tokens.tolist()
            self._pending.clear()
            self._bucket_cache = (-1, 0)
            for src in self.sources:
                if src.spec.primes and src.primed:  # what it observed was for other tokens
                    src.primed = False
                    src.drafter.reset()
        self._step_no += 1
        cap = self.max_nodes if context.nodes is None else min(self.max_nodes, context.nodes)
        latency = self.latency.table(len(context.tokens))
        drafting = cap > 0 and context.budget > 0
        bucket = self._bucket_of(context.tokens, len(context.tokens)) if drafting else 0

        # 1. ask the sources worth asking; the others that learn only keep up with the context
        asked: list[_Asked] = []
        wasted = 0.0  # seconds spent on sources that had nothing to propose
        for src in self.sources:
            wanted = src.primed if src.spec.primes else self._worth_asking(src, bucket, latency[0], self._step_no)
            if drafting and wanted:
                t0 = self._clock()
                ask = min(cap, max(MIN_ASK, int(2 * src.used) + 2)) if src.spec.sized else cap
                draft = src.drafter.propose(replace(context, nodes=ask))
                elapsed = self._clock() - t0 + src.primed_s
                src.cost += GAIN_RATE * (elapsed - src.cost) if src.last_asked > 0 else elapsed - src.cost
                src.last_asked = self._step_no
                if not len(draft) or draft.extra_embeds is not None:
                    wasted += elapsed
                    src.learn_gain(bucket, 1.0)
                    continue
                parents = draft.parents if draft.parents is not None else tuple(range(len(draft)))
                depth, rank = node_features(parents)
                b = bucket if src.spec.signal else int(src.last_hit)
                conditional = self.stats.estimate(src.index, b, depth, rank)
                self._pending.append(_Pending(src.index, b, tuple(draft.tokens), tuple(parents), depth, rank,
                                              start=len(self._tokens), kids=children(parents)))
                asked.append(_Asked(src, draft, conditional=conditional, elapsed=elapsed))
            elif src.spec.learns:
                src.drafter.propose(replace(context, nodes=0))

        # 2. merge (most promising source first), score, choose the nodes to verify
        final, chosen = EMPTY_DRAFT, None
        if asked:
            asked.sort(key=lambda entry: -entry.source.gain_at(bucket))
            merged, maps = merge_drafts([entry.draft for entry in asked], sum(len(entry.draft) for entry in asked))
            choice = self._choose(asked, merged, maps, latency, cap=cap, bucket=bucket, wasted=wasted,
                                  chains=self.chains)
            if choice.nodes and choice.gain * self.trust.factor(bucket) > 1.0 + self.margin:
                final, chosen = self._build(choice.nodes, merged, asked, maps), choice
            else:
                self._build((), merged, asked, maps)
        self._step = _Step(final=final, asked={entry.source.index: entry for entry in asked}, sent=self._clock(),
                           bucket=bucket, choice=chosen, draft_s=wasted + sum(entry.elapsed for entry in asked))
        return final

    @staticmethod
    def _choose(asked: list[_Asked], merged: Draft, maps: list[list[int]], latency: np.ndarray, *, cap: int,
                bucket: int, wasted: float, chains: bool = False) -> Choice:
        """The best nodes of the merged tree; updates each source's gain: what adding it to the ones before added.

        Nodes first placed by the k-th draft come after those of earlier drafts,
        so the tree of the first k drafts is a prefix of the merged tree, and
        its best rate, divided by that of the first k - 1 (a plain step for
        k = 1), is the k-th source's marginal gain, its drafting time included.
        A source that only repeats a better one, or costs more than it adds,
        stops being asked (but for probes).
        """
        conditional = np.zeros(len(merged))  # per merged node: the best of its sources' estimates
        previous, spent, size = 1.0 / (wasted + latency[0]), wasted, 0
        for entry, node_of in zip(asked, maps):
            np.maximum.at(conditional, np.asarray(node_of[1:]) - 1, entry.conditional)
            size = max(size, *node_of)
            spent += entry.elapsed
            scores = path_scores(merged.parents[:size], conditional[:size])
            if chains:  # the target verifies chains: the best path of the merged tree
                scores = best_path_scores(merged.parents[:size], scores)
            choice = best_size(scores, latency, draft_s=spent, max_nodes=cap)
            entry.source.learn_gain(bucket, choice.rate / previous)
            previous = choice.rate
        return choice

    def _worth_asking(self, src: Source, bucket: int, plain_s: float, step: int) -> bool:
        """Asked when it looked useful lately, or when re-checking it costs at most its share of the time."""
        if src.gain_at(bucket) > 1.0 + self.margin:
            return True
        share = self.probe_share / len(self.sources)
        return (step - src.last_asked) * share * plain_s >= src.cost

    @staticmethod
    def _build(keep: tuple[int, ...], merged: Draft, asked: list, maps: list[list[int]]) -> Draft:
        """The draft to verify from the kept merged nodes; sets each source's ``node_of`` in its numbering.

        Where every kept node is one source's (its whole draft, or the start of
        its chain), that source's own draft is verified as drafted (keeping its
        draft probabilities); otherwise the kept nodes, renumbered, with no
        draft probabilities.
        """
        if not keep:
            for entry in asked:
                entry.node_of = [0]
            return EMPTY_DRAFT
        final, final_of = None, None
        kept = set(keep)
        for entry, node_of in zip(asked, maps):
            draft, size = entry.draft, len(keep)
            if set(node_of[1: size + 1]) != kept or not (size == len(draft) or draft.is_chain):
                continue
            if size == len(draft):
                final = draft
            else:  # the start of a chain (a prefix of a sampled chain is a sampled chain)
                probs = None if draft.draft_probs is None else draft.draft_probs[:size]
                final = Draft(tokens=draft.tokens[:size], draft_probs=probs)
            final_of = {m: j for j, m in enumerate(node_of[: size + 1])}
            break
        if final is None:
            final_of = {0: 0, **{old: new for new, old in enumerate(keep, start=1)}}
            final = Draft(tokens=tuple(merged.tokens[m - 1] for m in keep),
                          parents=tuple(final_of[merged.parents[m - 1]] for m in keep))
        for entry, node_of in zip(asked, maps):
            placed = [0]
            for m in node_of[1:]:
                if m not in final_of:
                    break
                placed.append(final_of[m])
            entry.node_of = placed
        return final

    # ------------------------------------------------------------- observe

    def observe(self, outcome: StepOutcome) -> None:
        step, self._step = self._step, None
        as_proposed = step is not None and (outcome.draft is step.final or (
            outcome.draft.tokens == step.final.tokens and _parents(outcome.draft) == _parents(step.final)))
        self._tokens.extend(int(t) for t in outcome.tokens)
        priming = 0.0
        for src in self.sources:
            view = self._view(src, step.asked.get(src.index) if as_proposed else None, outcome, as_proposed)
            if src.spec.primes:
                src.primed = self._primes(src)
                if not src.primed:
                    src.drafter.reset()  # no stale guesses next time
                    continue
                t0 = self._clock()
                src.drafter.observe(view or outcome)
                src.primed_s = self._clock() - t0
                priming += src.primed_s
            elif view is not None:
                src.drafter.observe(view)
        self._resolve()
        if as_proposed:
            self._account(step, outcome)
            # what this step cost beyond drafting: the pass, acceptance, and the sources' learning
            verify_s = self._clock() - step.sent - priming
            self.latency.record(len(outcome.draft), verify_s, context=len(self._tokens) - len(outcome.tokens))
            if step.choice is not None and len(step.final):
                self.trust.record(step.bucket, tokens=len(outcome.tokens), predicted=1.0 + step.choice.expected,
                                  seconds=step.draft_s + verify_s, predicted_s=step.choice.seconds)
            elif not len(step.final):
                self.trust.fade_step(step.bucket)

    @staticmethod
    def _view(src: Source, entry: _Asked | None, outcome: StepOutcome, as_proposed: bool) -> StepOutcome | None:
        """The step as a source should observe it, or None when it need not."""
        if entry is not None and entry.draft is outcome.draft:
            return outcome  # it was verified exactly as drafted
        if src.spec.sees_all or (src.spec.learns and not as_proposed):
            return outcome
        if src.spec.learns:  # its own nodes that were verified, then the accepted path
            placed = entry is not None and len(entry.node_of) > 1
            return part_view(outcome, entry.draft if placed else EMPTY_DRAFT, entry.node_of if placed else [0])
        return None

    def _primes(self, src: Source) -> bool:
        """Whether a priming source will be asked at the next step (so it should observe this one)."""
        cached = self._bucket_cache[0] == len(self._tokens)
        bucket = self._bucket_of(None if cached else np.asarray(self._tokens, dtype=np.int64), len(self._tokens))
        return self._worth_asking(src, bucket, self.latency.table(len(self._tokens))[0], self._step_no + 1)

    def _bucket_of(self, tokens: np.ndarray | None, length: int) -> int:
        """The signal bucket of a context of ``length`` tokens (cached: a priming source asks for it early)."""
        if not self._signal:
            return 0
        if self._bucket_cache[0] != length:
            self._bucket_cache = (length, match_bucket(match_length(tokens)))
        return self._bucket_cache[1]

    def _account(self, step: _Step, outcome: StepOutcome) -> None:
        """Credit each verified node to the first source (most promising) that drafted it."""
        for entry in step.asked.values():
            entry.source.used = max(len(entry.node_of) - 1, 0.8 * entry.source.used)
        if not len(step.final):
            self._report["plain"]["chosen"] += 1
            return
        accepted = set(outcome.path)
        credited: set[int] = set()
        for entry in step.asked.values():  # in merge order
            mine = [node for node in entry.node_of[1:] if node not in credited]
            credited.update(mine)
            if mine:
                row = self._report[entry.source.name]
                row["chosen"] += 1
                row["nodes"] += len(mine)
                row["accepted"] += sum(1 for node in mine if node in accepted)

    def _resolve(self) -> None:
        """Score pending drafts against the tokens emitted since they were made."""
        done = []
        for pending in self._pending:
            decided, finished = resolve(pending.tokens, pending.parents, self._tokens[pending.start:],
                                        kids=pending.kids)
            if decided and not pending.recorded:  # its first-level guesses are decided now
                first = pending.kids[0]
                self.sources[pending.source].last_hit = any(hit for node, hit in decided[: len(first)])
            for node, hit in decided[pending.recorded:]:
                self.stats.update(pending.source, pending.bucket, pending.depth[node - 1], pending.rank[node - 1], hit)
            pending.recorded = len(decided)
            if finished:
                done.append(pending)
        for pending in done:
            self._pending.remove(pending)


def _parents(draft: Draft) -> tuple[int, ...]:
    return draft.parents if draft.parents is not None else tuple(range(len(draft)))


# ------------------------------------------------------------------ building


def source_names(options: dict[str, Any], device: str = "cpu", *, chains: bool = False) -> tuple[list[str], bool]:
    """The sources to use and whether the user listed them (then every one must build).

    Unasked, the registered methods that declare themselves default sources for this kind of target
    (:class:`~.registry.SourceSpec`: ``default`` has ``trees``, or ``chains`` where the target verifies
    chains only, as llama.cpp on the CPUs measured), plus those whose needed input was given or whose
    adapter may be shipped; none that avoids this device kind. Listed in ``sources``, any is used.
    """
    known = sources()
    raw = options.get("sources")
    if raw is None:
        kind = "chains" if chains else "trees"
        device_kind = "cpu" if torch.device(device).type == "cpu" else "gpu"
        names = []
        for name, spec in known.items():  # an adapter may be shipped for the model: tried, left out if none
            if device_kind in spec.avoid:
                continue
            if kind in spec.default or (spec.needs in INPUTS and options.get(spec.needs)) or \
                    (spec.needs == "adapter" and spec.shipped):
                names.append(name)
        return names, False
    names = [n.strip() for n in (raw.split(",") if isinstance(raw, str) else raw) if str(n).strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise QuickdraftError(f"auto: unknown source {unknown[0] if unknown else '(none given)'!r}; "
                              f"available: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise QuickdraftError(f"auto: a source is listed twice in {raw!r}")
    return names, True


def latency_prior(target) -> tuple[Callable[..., float], bool]:
    """Verify seconds per draft size, and whether they take the context length too.

    The machine profile (measured once; ``latency(n, context)``) when it looks
    sound. A profile that looks like noise (a busy machine while it was
    measured) is measured again, once; if it still does, a cautious generic
    shape stands in, scaled to its fastest pass: n nodes cost
    ``1 + log2(1 + n) / 4`` plain steps (float32 on a CPU; bfloat16 there is
    cheaper), which the step times seen then correct.
    """
    if target is None or not hasattr(target, "forward") or not hasattr(target, "new_cache"):
        return (lambda n: 0.02 * (1 + math.log2(1 + n) / 4)), False
    from ..profile import load_or_measure

    profile = load_or_measure(target)
    if not (profile.quiet and plausible(profile.latency)):
        profile = load_or_measure(target, refresh=True)
    if profile.quiet and plausible(profile.latency):
        return profile.latency, True
    log.info("auto: the latency profile looks noisy (busy machine); starting from a cautious generic one")
    base = min(profile.seconds)
    return (lambda n: base * (1 + math.log2(1 + n) / 4)), False


@register("auto", order=13,
          description="picks drafters and draft/tree size every step by expected speed; plain steps when nothing pays")
def build(ctx: BuildContext) -> Drafter:
    options = ctx.options
    max_nodes = int(options.get("max_nodes", 32))
    limit = getattr(ctx.target, "max_draft", None)  # a backend's exact pass size caps what auto verifies
    max_nodes = max_nodes if limit is None else min(max_nodes, limit)
    chains = not getattr(ctx.target, "verifies_trees", True)
    names, explicit = source_names(options, str(getattr(ctx.target, "device", "cpu")), chains=chains)
    inputs = {k: options[k] for k in INPUTS if options.get(k) is not None}
    built = []
    capabilities = getattr(ctx.target, "capabilities", None)
    for name in names:
        spec = sources()[name]
        if not explicit and capabilities is not None and not get_method(name).runs_on(capabilities):
            continue  # not on this backend (a source the user lists is built, and fails with the reason)
        sub = {**inputs, **spec.options, **({"nodes": max_nodes} if spec.sized else {})}
        tries = [sub]
        if not explicit and spec.needs == "adapter" and spec.shipped and "adapter" in sub:
            tries.append({k: v for k, v in sub.items() if k != "adapter"})  # another kind's given: the shipped one
        for options_tried in tries:
            try:
                built.append((spec, get_method(name).build(BuildContext(target=ctx.target, options=options_tried))))
                break
            except QuickdraftError:
                if explicit or spec.needs != "adapter":  # none for this model, or the one given is another kind's
                    raise
    prior, contextual = latency_prior(ctx.target)
    latency = LatencyModel(prior, max_nodes=max_nodes, contextual=contextual)
    return Auto(built, latency, max_nodes=max_nodes, margin=float(options.get("margin", 0.0)),
                probe_share=float(options.get("probe_share", 0.02)),
                chains=chains)


__all__ = ["Auto", "Source", "SourceSpec", "source_names"]
