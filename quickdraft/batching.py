"""Continuous batching: one decode step serves every active request, with speculation budgeted by goodput.

The single-request loop (:func:`quickdraft.engine.decode`) stays the reference; a batched step does the
same five things for each request in the batch, with one target pass for all of them::

    0. admit    - a joining request's prompt is prefilled, one chunk per step, in plain decoding's chunks
    1. propose  - each request's drafter proposes (its own drafter, tokens, sampling draws, stop strings)
    2. plan     - how many draft tokens each verifies (goodput.plan_drafts; alone: all, as alone)
    3. verify   - one pass over every request's root and draft chain (its own KV stream and positions)
    4. accept, commit, observe - per request, exactly as alone (engine.accept)

A request's tokens do not depend on the others in its batch: its rows are computed as alone (checked on the
machine: :func:`quickdraft.backends.llamacpp_batch.check_batch`), greedy acceptance keeps plain decoding's
tokens whatever the draft length, and sampling draws are keyed by position, so a seeded request with a
deterministic drafter gives the same text alone or batched.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .drafters import Draft, DraftContext, Drafter, StepOutcome, build_drafter
from .engine import Engine, GenerationResult, Request, Stats, accept, best_chain, cut_at_eos, shape_draft
from .errors import QuickdraftError
from .goodput import AcceptanceRate, plan_drafts
from .sampling import Draws
from .text import IncrementalText

POLICIES = ("goodput", "always", "never")  # how many draft tokens a batched step verifies


@dataclass(eq=False)
class Lane:
    """One request in a batch: its slot (KV stream), drafter, committed tokens and output so far."""

    request: Request
    drafter: Drafter
    key: tuple
    slot: int
    tokens: np.ndarray
    capacity: int
    draws: Draws | None
    text: IncrementalText
    stats: Stats
    rate: AcceptanceRate = field(default_factory=AcceptanceRate)
    length: int = 0
    prefilled: int = 0  # prompt tokens in the slot's cache (all but the last, once admitted)
    token_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def ready(self) -> bool:
        return self.prefilled >= len(self.request.prompt_ids) - 1


@dataclass
class BatchStats:
    """What the batch did, for the server's metrics."""

    passes: int = 0
    rows: int = 0
    lanes: int = 0  # requests summed over passes (batch size * passes)
    tokens: int = 0
    pass_s: float = 0.0
    drafted: Counter = field(default_factory=Counter)  # method -> draft tokens verified
    accepted: Counter = field(default_factory=Counter)  # method -> draft tokens accepted
    steps: Counter = field(default_factory=Counter)  # method -> request steps

    @property
    def goodput(self) -> float:
        """Committed tokens per second of pass time."""
        return self.tokens / self.pass_s if self.pass_s > 0 else 0.0


class BatchDecoder:
    """Requests decoded together on one engine (its backend must offer ``batch_slots``).

    slots: requests decoded at once; policy: ``goodput`` (SmartSpec), ``always`` (every draft token a
    drafter proposes, within the pass's row limit) or ``never`` (plain steps, batched).
    """

    def __init__(self, engine: Engine, slots: int, *, policy: str = "goodput") -> None:
        if policy not in POLICIES:
            raise QuickdraftError(f"unknown speculation policy {policy!r} (one of {', '.join(POLICIES)})")
        make = getattr(engine.target, "batch_slots", None)
        if make is None:
            raise QuickdraftError(f"the {getattr(engine.target, 'backend', 'transformers')} backend does not batch "
                                  "requests (use --backend llamacpp)")
        self.engine = engine
        self.target = engine.target
        self.policy = policy
        self.slots, self.check = make(slots)
        self.lanes: list[Lane] = []
        self.stats = BatchStats()
        self._idle: dict[tuple, list[Drafter]] = defaultdict(list)

    @property
    def exact(self) -> bool:
        return bool(self.target.exact and self.check.exact)

    def free(self) -> int:
        return self.slots.free()

    # ------------------------------------------------------------ joining and leaving

    def join(self, request: Request, *, options: dict[str, Any] | None = None) -> Lane:
        """Add a prepared request (its prompt is prefilled over the next steps)."""
        if len(request.prompt_ids) >= self.slots.per_slot:
            raise QuickdraftError(f"the prompt has {len(request.prompt_ids)} tokens; a batch slot holds "
                                  f"{self.slots.per_slot}")
        drafter, key = self._drafter(request, options)
        slot = self.slots.open()
        prompt_len = len(request.prompt_ids)
        capacity = min(prompt_len + request.max_new_tokens, self.slots.per_slot)
        tokens = np.zeros(capacity, dtype=np.int64)
        tokens[:prompt_len] = request.prompt_ids
        lane = Lane(request=request, drafter=drafter, key=key, slot=slot, tokens=tokens,
                    capacity=capacity, draws=None if request.params.greedy else Draws.for_request(request.params.seed),
                    text=IncrementalText(self.engine.tokenizer, stops=request.stop),
                    stats=Stats(prompt_tokens=prompt_len), length=prompt_len)
        self.lanes.append(lane)
        if lane.ready:  # a one-token prompt: nothing to prefill
            drafter.observe_prompt(lane.tokens[:lane.length], None)
        return lane

    def leave(self, lane: Lane) -> None:
        """Drop a request (finished or cancelled): its slot is freed, its drafter kept for the next one."""
        if lane in self.lanes:
            self.lanes.remove(lane)
            self.slots.close(lane.slot)
            self._idle[lane.key].append(lane.drafter)

    def warm(self, method: str, options: dict[str, Any] | None = None) -> None:
        """Build a drafter of ``method`` for every slot now (some take a second to build: ``ngram`` reads its
        prior), so requests joining later do not wait for one."""
        key = _drafter_key(method, options, None)
        while len(self._idle[key]) < self.slots.slots:
            self._idle[key].append(self._build(method, options))

    def _build(self, method: str, options: dict[str, Any] | None) -> Drafter:
        try:
            return build_drafter(method, self.target, dict(options or {}))
        except (TypeError, ValueError) as exc:
            raise QuickdraftError(f"bad options for method {method!r}: {exc}") from exc

    def _drafter(self, request: Request, options: dict[str, Any] | None) -> tuple[Drafter, tuple]:
        key = _drafter_key(request.method, options, request.tenant)
        idle = self._idle[key]
        drafter = idle.pop() if idle else self._build(request.method, options)
        drafter.reset()
        return drafter, key

    # ------------------------------------------------------------ one step

    def step(self) -> dict[Lane, list[str | GenerationResult]]:
        """One step of every request: text pieces per request, and the result of each that finished."""
        events: dict[Lane, list[str | GenerationResult]] = {}
        self._admit()
        lanes = [lane for lane in self.lanes if lane.ready]
        if not lanes:
            return events
        t0 = time.perf_counter()
        drafts = [self._propose(lane) for lane in lanes]
        drafts = self._plan(lanes, drafts)
        t1 = time.perf_counter()
        rows = [(lane.slot, [int(lane.tokens[lane.length - 1]), *draft.tokens]) for lane, draft in zip(lanes, drafts)]
        order = sorted(range(len(lanes)), key=lambda i: lanes[i].slot)  # llama.cpp batches consecutive ids
        logits = self.slots.forward([rows[i] for i in order])
        by_lane = {order[j]: logits[j] for j in range(len(order))}
        t2 = time.perf_counter()
        self.stats.passes += 1
        self.stats.rows += sum(len(r[1]) for r in rows)
        self.stats.lanes += len(lanes)
        self.stats.pass_s += t2 - t1
        for i, (lane, draft) in enumerate(zip(lanes, drafts)):
            events[lane] = self._commit(lane, draft, torch.from_numpy(by_lane[i]), t1 - t0, t2 - t1)
        return events

    def _admit(self) -> None:
        """Prefill one chunk of the first request still waiting for it (plain decoding's chunking)."""
        for lane in self.lanes:
            if lane.ready:
                continue
            start = time.perf_counter()
            prompt = lane.request.prompt_ids[:-1]
            chunk = prompt[lane.prefilled: lane.prefilled + self.slots.context.n_batch]
            self.slots.prefill(lane.slot, chunk)
            lane.prefilled += len(chunk)
            lane.stats.prefill_s += time.perf_counter() - start
            if lane.ready:
                lane.drafter.observe_prompt(lane.tokens[:lane.length], None)
            return

    def _propose(self, lane: Lane) -> Draft:
        room = lane.capacity - lane.length
        cap = lane.request.max_draft  # the request's own cap (0: plain steps)
        if cap == 0 or self.policy == "never" or room <= 1:
            return Draft(tokens=())
        draft = lane.drafter.propose(DraftContext(tokens=lane.tokens[:lane.length], prompt_len=len(lane.request.prompt_ids),
                                                  budget=room - 1, params=lane.request.params))
        budget = room - 1 if cap is None else min(room - 1, cap)
        draft = shape_draft(self.target, draft, budget)
        return best_chain(draft)  # a batch verifies chains: each request's rows in its own stream

    def _plan(self, lanes: list[Lane], drafts: list[Draft]) -> list[Draft]:
        offered = [len(d) for d in drafts]
        limit = self.slots.row_limit
        if self.policy == "goodput" and len(lanes) > 1 and any(offered):
            def cost(rows: tuple[int, ...]) -> float:
                if limit is not None and sum(rows) > limit:
                    return float("inf")
                return self.slots.cost(sorted((lane.slot, r) for lane, r in zip(lanes, rows)))
            sizes = list(plan_drafts([lane.rate.value for lane in lanes], offered, cost))
        else:
            sizes = list(offered)
        while limit is not None and sum(sizes) + len(lanes) > limit:  # the row limit: trim the longest drafts
            sizes[int(np.argmax(sizes))] -= 1
        return [_cut(d, k) for d, k in zip(drafts, sizes)]

    def _commit(self, lane: Lane, draft: Draft, logits: torch.Tensor, draft_s: float,
                verify_s: float) -> list[str | GenerationResult]:
        request = lane.request
        verdict = accept(logits, draft, request.params, lane.draws, position=lane.length)
        self.slots.keep(lane.slot, lane.length + len(verdict.path))
        emitted = cut_at_eos(verdict.tokens, self.target.eos_ids)
        lane.tokens[lane.length: lane.length + len(emitted)] = emitted
        lane.length += len(emitted)
        t0 = time.perf_counter()
        lane.drafter.observe(StepOutcome(draft=draft, path=verdict.path, tokens=verdict.tokens,
                                         target_logits=logits, target_argmax=verdict.best))
        lane.rate.record(len(draft), verdict.accepted)
        stats = lane.stats
        stats.steps += 1
        stats.new_tokens += len(emitted)
        stats.drafted_tokens += len(draft)
        stats.accepted_hist[verdict.accepted] += 1
        stats.draft_s += draft_s + time.perf_counter() - t0
        stats.verify_s += verify_s
        self.stats.tokens += len(emitted)
        self.stats.steps[request.method] += 1
        self.stats.drafted[request.method] += len(draft)
        self.stats.accepted[request.method] += verdict.accepted
        lane.token_ids.extend(emitted)
        out: list[str | GenerationResult] = []
        piece, stopped = lane.text.add(emitted)
        if piece:
            out.append(piece)
        if stopped or emitted[-1] in self.target.eos_ids:
            lane.finish = "stop"
        elif lane.length >= lane.capacity:
            lane.finish = "length"
        if lane.finish is not None:
            out += self._finish(lane)
        return out

    def _finish(self, lane: Lane) -> list[str | GenerationResult]:
        lane.stats.wall_s = time.perf_counter() - lane.started
        lane.stats.sources = {name: dict(counts) for name, counts in lane.drafter.explain().items()}
        rest = lane.text.flush()
        self.leave(lane)
        result = GenerationResult(text=lane.text.text, token_ids=lane.token_ids, method=lane.request.method,
                                  model=self.engine.model_name, stats=lane.stats, finish_reason=lane.finish,
                                  exact=self.exact)
        return [rest, result] if rest else [result]

    def run(self, requests: list[Request], *, options: dict[str, Any] | None = None) -> list[GenerationResult]:
        """Decode prepared requests together (as many at once as there are slots; the rest join as others
        finish): their results, in order."""
        waiting = deque(enumerate(requests))
        results: dict[int, GenerationResult] = {}
        index: dict[Lane, int] = {}
        while waiting or self.lanes:
            while waiting and self.free():
                i, request = waiting.popleft()
                index[self.join(request, options=options)] = i
            for lane, items in self.step().items():
                for item in items:
                    if isinstance(item, GenerationResult):
                        results[index.pop(lane)] = item
        return [results[i] for i in range(len(requests))]


def _drafter_key(method: str, options: dict[str, Any] | None, tenant: str | None) -> tuple:
    return method, tuple(sorted((k, repr(v)) for k, v in (options or {}).items())), tenant


def _cut(draft: Draft, k: int) -> Draft:
    if k >= len(draft):
        return draft
    return Draft(tokens=draft.tokens[:k], draft_probs=None if draft.draft_probs is None else draft.draft_probs[:k])


__all__ = ["BatchDecoder", "BatchStats", "Lane", "POLICIES"]
