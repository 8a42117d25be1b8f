"""The engine: one decode loop shared by plain decoding and every drafter.

Each step::

    1. propose  - the drafter guesses tokens (a chain or a tree; maybe none)
    2. verify   - one target forward pass over the root and every drafted token
    3. accept   - greedy or speculative-sampling acceptance (pure functions, verify.py)
    4. commit   - keep the accepted tokens; the KV cache keeps the accepted path
    5. observe  - the drafter learns what was accepted

Plain decoding (``ar``) is this loop with an empty draft, so the baseline and
every method share every line but the drafter.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Collection, Iterator, Sequence

import numpy as np
import torch

from .drafters import Draft, DraftContext, Drafter, StepOutcome, build_drafter, get_method
from .errors import QuickdraftError
from .models import TargetModel
from .sampling import Draws, SamplingParams, target_probs
from .tree import chain_parents, first_branch
from .text import MAX_STOP_CHARS, IncrementalText
from .verify import Verdict, verify_greedy, verify_sampling, verify_tree_greedy, verify_tree_positional, \
    verify_tree_sampling


@dataclass
class Stats:
    """Counters of one generation. ``steps`` counts target forward passes after the prefill."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0
    drafted_tokens: int = 0
    accepted_hist: Counter = field(default_factory=Counter)  # accepted draft tokens per step -> count
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # Drafter.explain(): choices of e.g. auto
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    wall_s: float = 0.0

    @property
    def mean_accepted(self) -> float:
        """New tokens per target forward pass, bonus token included (plain decoding: 1.0)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "mean_accepted": round(self.mean_accepted, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "wall_s": round(self.wall_s, 4),
            "prefill_s": round(self.prefill_s, 4),
            "draft_s": round(self.draft_s, 4),
            "verify_s": round(self.verify_s, 4),
            "drafted_tokens": self.drafted_tokens,
            "accepted_hist": {str(k): v for k, v in sorted(self.accepted_hist.items())},
            **({"sources": {k: dict(v) for k, v in self.sources.items()}} if self.sources else {}),
        }


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    method: str
    model: str
    stats: Stats
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    exact: bool = True  # greedy output promised equal to plain greedy decoding here (TargetModel.exact)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "method": self.method,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "exact": self.exact,
            "stats": self.stats.to_dict(),
        }


@dataclass(frozen=True)
class Request:
    """A validated generation request (what ``Engine.generate`` was asked)."""

    prompt_ids: tuple[int, ...]
    method: str
    params: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    tenant: str | None = None  # whose drafters serve it (Engine.drafter); None: the shared ones
    max_draft: int | None = None  # draft tokens a step may verify at most (0: plain steps); None: the method's own


Message = dict[str, str]


class Engine:
    """A loaded target model plus the decode loop. Not thread-safe: one generation at a time."""

    def __init__(self, target: TargetModel, *, max_drafters: int = 8) -> None:
        if max_drafters <= 0:
            raise QuickdraftError(f"max_drafters must be positive, got {max_drafters}")
        self.target = target
        self.max_drafters = max_drafters
        self._drafters: OrderedDict[tuple, Drafter] = OrderedDict()  # least recently used first

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @property
    def model_name(self) -> str:
        return self.target.name

    # ------------------------------------------------------------------ API

    def generate(self, prompt: str | Sequence[Message], **kwargs: Any) -> GenerationResult:
        """Generate a completion. Keyword arguments as for :meth:`stream`."""
        events = self.events(prompt, **kwargs)
        for item in events:
            if isinstance(item, GenerationResult):
                return item
        raise AssertionError("events() always ends with a result")

    def stream(self, prompt: str | Sequence[Message], **kwargs: Any) -> Iterator[str]:
        """Yield text pieces as they are produced."""
        for item in self.events(prompt, **kwargs):
            if isinstance(item, str):
                yield item

    def events(
        self,
        prompt: str | Sequence[Message],
        *,
        method: str = "ar",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        system: str | None = None,
        chat: bool = True,
        options: dict[str, Any] | None = None,
    ) -> Iterator[str | GenerationResult]:
        """Yield text pieces, then the :class:`GenerationResult` last.

        prompt: a string (a user message, or raw text with ``chat=False``) or a
        list of ``{"role", "content"}`` messages. ``options`` are passed to the
        method's drafter (for example ``{"k": 8}`` for ``pld``).
        """
        request = self.prepare(
            prompt, method=method, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, seed=seed, stop=stop, system=system, chat=chat,
        )
        yield from self.run(request, options=options)

    def prepare(
        self,
        prompt: str | Sequence[Message],
        *,
        method: str = "ar",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        system: str | None = None,
        chat: bool = True,
        tenant: str | None = None,
        max_draft: int | None = None,
    ) -> Request:
        """Validate a request and tokenize its prompt; raises QuickdraftError on bad input.

        tenant: requests of one tenant share drafters (and what they learn) only with each other
        (None: the engine's shared drafters). max_draft: at most this many draft tokens verified per
        step (0: speculation off for this request, plain steps); None: as the method sizes its drafts."""
        get_method(method)  # unknown method -> error listing the known ones
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise QuickdraftError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not isinstance(s, str) or not s for s in stops):
            raise QuickdraftError("stop strings must be non-empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise QuickdraftError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
        if max_draft is not None and (isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 0):
            raise QuickdraftError(f"max_draft must be a non-negative integer, got {max_draft!r}")
        prompt_ids = self.encode(prompt, system=system, chat=chat)
        if len(prompt_ids) >= self.target.max_context:
            raise QuickdraftError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {self.target.max_context}"
            )
        return Request(tuple(prompt_ids), method, params, max_new_tokens, stops, tenant, max_draft)

    def encode(self, prompt: str | Sequence[Message], *, system: str | None = None, chat: bool = True) -> list[int]:
        """Token ids of a prompt, through the chat template unless ``chat`` is False (thread-safe)."""
        with self.target.tokenizer_lock:
            return self._encode(prompt, system=system, chat=chat)

    def _encode(self, prompt: str | Sequence[Message], *, system: str | None, chat: bool) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            if not prompt.strip():
                raise QuickdraftError("the prompt is empty")
            if not chat:
                if system:
                    raise QuickdraftError("a system message needs the chat template (drop --no-chat or --system)")
                return list(tok.encode(prompt, add_special_tokens=True))
            messages: list[Message] = [{"role": "user", "content": prompt}]
        else:
            messages = _check_messages(prompt)
            if not chat:
                raise QuickdraftError("a list of messages needs the chat template")
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        if not getattr(tok, "chat_template", None):
            if len(messages) == 1 and messages[0]["role"] == "user":
                return list(tok.encode(messages[0]["content"], add_special_tokens=True))
            raise QuickdraftError(f"model {self.model_name} has no chat template; pass a plain prompt")
        specials = _special_texts(tok)
        if not any(special in m["content"] for m in messages for special in specials):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok.encode(text, add_special_tokens=False))
        return _encode_chat_as_text(tok, messages)

    def drafter(self, method: str, options: dict[str, Any] | None = None, *, strict: Collection[str] = (),
                tenant: str | None = None) -> Drafter:
        """The engine's drafter for a method and options, reset for a new request.

        Drafters are kept per (method, options, tenant) so statistics they learn
        carry across requests of this engine (of one tenant); at most
        ``max_drafters`` of them (the least recently used is dropped, with what
        it learned). What they learn changes what they draft, never the text:
        greedy output is plain decoding's, and seeded sampling plain sampling's. strict: names among ``options`` that
        the user set for this method: one the method does not take is an
        error (others may be meant for other methods and go unused); checked
        when the drafter is built.
        """
        options = dict(options or {})
        key = (method, tuple(sorted((k, repr(v)) for k, v in options.items())), tenant)
        if key not in self._drafters:
            try:
                built = build_drafter(method, self.target, options, strict=strict)
            except (TypeError, ValueError) as exc:
                raise QuickdraftError(f"bad options for method {method!r}: {exc}") from exc
            while len(self._drafters) >= self.max_drafters:
                self._drafters.popitem(last=False)
            self._drafters[key] = built
        self._drafters.move_to_end(key)
        drafter = self._drafters[key]
        drafter.reset()
        return drafter

    # ----------------------------------------------------------- the loop

    def run(self, request: Request, *, options: dict[str, Any] | None = None) -> Iterator[str | GenerationResult]:
        """Decode a prepared request: text pieces, then the result."""
        drafter = self.drafter(request.method, options, tenant=request.tenant)
        stats = Stats(prompt_tokens=len(request.prompt_ids))
        text = IncrementalText(self.tokenizer, stops=request.stop)
        token_ids: list[int] = []
        finish = "length"
        start = time.perf_counter()
        steps = decode(self.target, request.prompt_ids, drafter, request.params, request.max_new_tokens, stats,
                       max_draft=request.max_draft)
        try:
            for emitted in steps:
                token_ids.extend(emitted)
                piece, stopped = text.add(emitted)
                if piece:
                    yield piece
                if stopped:
                    finish = "stop"
                    break
            else:
                if token_ids and token_ids[-1] in self.target.eos_ids:
                    finish = "stop"
        finally:
            steps.close()
            stats.wall_s = time.perf_counter() - start
            stats.sources = drafter.explain()
        rest = text.flush()
        if rest:
            yield rest
        yield GenerationResult(
            text=text.text, token_ids=token_ids, method=request.method, model=self.model_name,
            stats=stats, finish_reason=finish, exact=self.target.exact,
        )


def decode(
    target: TargetModel,
    prompt_ids: Sequence[int],
    drafter: Drafter,
    params: SamplingParams,
    max_new_tokens: int,
    stats: Stats,
    *,
    max_draft: int | None = None,
) -> Iterator[tuple[int, ...]]:
    """The decode loop: yields the tokens each step emits, cut at EOS and at max_new_tokens (and drafts at
    ``max_draft`` tokens, when given).

    Invariant: the KV cache holds every committed token but the last one (the
    *root*), which is fed as the first input of the next step. So the prefill
    covers the prompt minus its last token, and every step, plain or not, is
    one forward pass emitting at least one token.
    """
    prompt_len = len(prompt_ids)
    capacity = min(prompt_len + max_new_tokens, target.max_context)
    tokens = np.zeros(capacity, dtype=np.int64)  # committed tokens: [prompt | generated]
    tokens[:prompt_len] = prompt_ids
    length = prompt_len
    cache = target.new_cache()
    draws = None if params.greedy else Draws.for_request(params.seed)  # randomness keyed by token position

    t0 = time.perf_counter()
    hidden = None
    if prompt_len > 1:
        hidden = target.prefill(list(prompt_ids[:-1]), cache, hidden=drafter.wants_prompt_hidden)
    drafter.observe_prompt(tokens[:prompt_len], hidden)
    stats.prefill_s = time.perf_counter() - t0

    while length < capacity:
        room = capacity - length  # tokens we may still emit (>= 1)

        # 1. propose (at most room - 1 tokens, so accepted + bonus fit)
        t0 = time.perf_counter()
        draft = drafter.propose(
            DraftContext(tokens=tokens[:length], prompt_len=prompt_len, budget=room - 1, params=params)
        )
        draft = shape_draft(target, draft, room - 1 if max_draft is None else min(room - 1, max_draft))
        t1 = time.perf_counter()

        # 2. verify: one forward over the root and the drafted tokens
        root = int(tokens[length - 1])
        base = len(cache)
        out = target.forward_full([root, *draft.tokens], cache, draft.parents, extra_embeds=draft.extra_embeds,
                                  extra_parents=draft.extra_parents, hidden=drafter.wants_hidden)
        logits = out.logits  # [n + 1, V]; extra inputs (if any) are dropped from the cache at commit

        # 3. accept
        verdict = accept(logits, draft, params, draws, position=length)

        # 4. commit: the cache keeps the root and the accepted path
        cache.keep(base, [0, *verdict.path])
        emitted = cut_at_eos(verdict.tokens, target.eos_ids)
        tokens[length: length + len(emitted)] = emitted
        length += len(emitted)
        t2 = time.perf_counter()

        # 5. observe
        drafter.observe(StepOutcome(draft=draft, path=verdict.path, tokens=verdict.tokens, target_logits=logits,
                                    target_hidden=out.hidden, extra_logits=out.extra_logits,
                                    target_argmax=verdict.best))
        t3 = time.perf_counter()

        stats.steps += 1
        stats.new_tokens += len(emitted)
        stats.drafted_tokens += len(draft)
        stats.accepted_hist[verdict.accepted] += 1
        stats.draft_s += (t1 - t0) + (t3 - t2)
        stats.verify_s += t2 - t1
        yield emitted
        if emitted[-1] in target.eos_ids:
            return


def accept(
    logits: torch.Tensor, draft: Draft, params: SamplingParams, draws: Draws | None, *, position: int = 0
) -> Verdict:
    """Greedy or sampling acceptance for a chain or a tree. logits: [n + 1, V]; position: the index of the
    first token this step emits (the draws are keyed by it)."""
    tokens = list(draft.tokens)
    if params.greedy:
        if draft.is_chain:
            return verify_greedy(logits, tokens)
        return verify_tree_greedy(logits, tokens, draft.parents)
    assert draws is not None, "sampling needs the request's draws"
    # Sampling draws on the host with CPU generators (the same draws on every device): the probabilities
    # move there once per step.
    probs = target_probs(logits, params).cpu()
    if draft.draft_probs is None:  # a deterministic draft: plain sampling's own token at each position
        parents = chain_parents(len(tokens)) if draft.is_chain else draft.parents
        return verify_tree_positional(probs, tokens, parents, lambda depth: draws.at(position + depth))
    # A sampled draft: speculative (rejection) sampling, its draws keyed by the step's first position.
    generator = draws.at(position)
    draft_probs = draft.draft_probs.cpu()
    if not draft.is_chain:
        return verify_tree_sampling(probs, tokens, draft.parents, draft_probs, generator)
    return verify_sampling(probs, tokens, draft_probs, generator)


def shape_draft(target: TargetModel, draft: Draft, budget: int) -> Draft:
    """A proposed draft made verifiable on ``target``: at most ``budget`` deep, at most the rows a pass may
    have and stay exact on its backend (``max_draft``), its best chain where whole trees are not exact."""
    limit = getattr(target, "max_draft", None)
    draft = fit_draft(draft, budget if limit is None else min(budget, limit))
    if not getattr(target, "verifies_trees", True):  # a backend whose tree rows are not exact here: the draft's best chain
        draft = best_chain(draft)
    if limit is not None and len(draft) > limit:  # a tree's first nodes (drafters list them best first)
        draft = Draft(tokens=draft.tokens[:limit], parents=None if draft.parents is None else draft.parents[:limit],
                      draft_probs=None if draft.draft_probs is None else draft.draft_probs[:limit])
    return draft


def fit_draft(draft: Draft, budget: int) -> Draft:
    """Drop draft nodes deeper than ``budget``, so accepted tokens plus the bonus fit the room left."""
    if draft.parents is None or draft.is_chain:
        if len(draft) <= budget:
            return draft
        probs = None if draft.draft_probs is None else draft.draft_probs[:budget]
        return Draft(tokens=draft.tokens[:budget], draft_probs=probs)
    depth = [0]
    for p in draft.parents:
        depth.append(depth[p] + 1)
    if max(depth) <= budget:
        return draft
    keep = [i for i in range(len(draft)) if depth[i + 1] <= budget]  # ancestors of a kept node are kept
    renumber = {0: 0, **{old + 1: new + 1 for new, old in enumerate(keep)}}
    return Draft(
        tokens=tuple(draft.tokens[i] for i in keep),
        parents=tuple(renumber[draft.parents[i]] for i in keep),
        draft_probs=None if draft.draft_probs is None else draft.draft_probs[keep],
    )


def best_chain(draft: Draft) -> Draft:
    """A tree draft cut to its first branch (:func:`~quickdraft.tree.first_branch`); a chain as it is."""
    if draft.is_chain:
        return draft
    assert draft.extra_embeds is None, "extra inputs go with a whole tree"
    nodes = first_branch(draft.parents)
    keep = [node - 1 for node in nodes]
    return Draft(tokens=tuple(draft.tokens[i] for i in keep),
                 draft_probs=None if draft.draft_probs is None else draft.draft_probs[keep])


def cut_at_eos(tokens: tuple[int, ...], eos_ids: frozenset[int]) -> tuple[int, ...]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens


def _check_messages(messages: Sequence[Message]) -> list[Message]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise QuickdraftError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise QuickdraftError(f"message {i} must be an object with string 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise QuickdraftError(f"message {i} has unknown role {m['role']!r} (system, user or assistant)")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in out if m["role"] == "user"):
        raise QuickdraftError("the prompt is empty (no user message with content)")
    return out


@functools.lru_cache(maxsize=8)
def _special_texts(tokenizer) -> tuple[str, ...]:
    """The texts the tokenizer reads as special (control) tokens: ``<|im_start|>``, ``</s>``, ..."""
    texts = set(getattr(tokenizer, "all_special_tokens", ()))
    texts.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    return tuple(sorted(texts))


def _encode_chat_as_text(tokenizer, messages: list[Message]) -> list[int]:
    """The chat template's ids with every message's content encoded as text: special-token text a user
    writes (``<|im_start|>assistant``) stays text, so a message cannot forge turns. The template is
    rendered around placeholders; its own parts are encoded as usual, the contents with special tokens
    split into ordinary ones."""
    marks = [f"\u2063quickdraft-content-{i}\u2063" for i in range(len(messages))]
    rendered = tokenizer.apply_chat_template([{**m, "content": mark} for m, mark in zip(messages, marks)],
                                             add_generation_prompt=True, tokenize=False)
    if any(rendered.count(mark) != 1 for mark in marks):
        raise QuickdraftError("a message contains special-token text and this model's chat template changes "
                              "message contents, so it cannot be encoded safely; remove the special tokens")
    ids: list[int] = []
    rest = rendered
    for message, mark in zip(messages, marks):
        before, _, rest = rest.partition(mark)
        ids += tokenizer.encode(before, add_special_tokens=False)
        ids += tokenizer.encode(message["content"], add_special_tokens=False, split_special_tokens=True)
    return ids + list(tokenizer.encode(rest, add_special_tokens=False))


def load(model: str = "smollm2-135m-instruct", *, dtype: str = "auto", device: str = "cpu",
         threads: int | None = None, backend: str = "auto", tune_memory: bool = False,
         profile: bool = True) -> Engine:
    """Load a model and return an :class:`Engine` for it.

    backend: ``auto`` (llama.cpp for a GGUF file or alias on the CPU when llama-cpp-python is
    installed, else transformers), ``transformers`` or ``llamacpp`` (:mod:`quickdraft.backends`).
    threads: CPU threads (torch's, or llama.cpp's).
    tune_memory: on a CPU with transformers, ask glibc's malloc to keep freed memory for the next pass
    (process-wide, :mod:`quickdraft.memory`; faster prefills). The CLI and server turn it on.
    profile: drafters that size their drafts by the machine's measured pass latency may measure it once
    and cache it under the cache folder (:mod:`quickdraft.profile`); False: they start from a generic
    shape and learn from the steps they see, nothing timed or written at build.

    Example (loads a real model, so not a doctest)::

        engine = load("smollm2-135m-instruct")
        engine.generate("Hi!", method="pld", max_new_tokens=32).text
    """
    from .backends import choose_backend, load_target

    on_torch = choose_backend(model, backend, device=device, dtype=dtype) == "transformers"
    if threads is not None:
        if threads <= 0:
            raise QuickdraftError(f"threads must be positive, got {threads}")
        if on_torch:
            torch.set_num_threads(threads)
    if tune_memory and on_torch and torch.device(device).type == "cpu":
        from .memory import keep_freed_memory

        keep_freed_memory()  # no page faults for every pass's intermediate tensors
    target = load_target(model, backend=backend, dtype=dtype, device=device, threads=threads)
    target.profiling = profile
    return Engine(target)


__all__ = ["Engine", "GenerationResult", "Request", "Stats", "accept", "best_chain", "decode", "fit_draft", "load",
           "shape_draft"]
