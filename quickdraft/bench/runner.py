"""The measurement loop of ``quickdraft bench``: interleaved runs, records.jsonl, resume.

Order of work (``plan``)::

    k = 0
    for repeat in range(repeats):          # --repeats repeats the whole pass
        for prompt in suite:               # file order
            for method in rotate([ar, *methods], by=k):  # interleaved: drift hits every method alike
                answer every turn, append one record to records.jsonl
            k += 1

The order of the methods rotates from prompt to prompt (``k`` counts the
prompts of every repeat), because the first answer to a new prompt is slower:
measured, `ar` three times on each of 14 prompts, the first run was 2% slower
than the second and third (tokens per second, mean ratio 1.021 and 1.019).
With `ar` always first, every speedup came out about 2% too high.

Every method goes through the same public API: our methods through
``Engine.prepare`` + ``Engine.run`` (method name and ``options``), the peer
baselines (``hf-generate``, ``hf-pld``, ``hf-assisted``) through transformers'
``generate`` on the same model and tokenizer with the same prompt ids. Tokens
are counted alike: the new tokens after the prompt, up to and including the
EOS token when one ends the answer. Time is the wall clock around the decode
call only (the prompt is tokenized before the clock starts).

A record is one line of JSON, appended and flushed as soon as its prompt is
done, so ``--resume`` continues an interrupted run without redoing or losing a
finished prompt; a line torn by a kill is dropped on resume.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

from ..drafters import get_method, methods as registered_methods
from ..errors import QuickdraftError
from ..options import options_for, parse_options, render_value, split_variant
from .common import BASELINE, HF_PLD_NGRAM, HF_PLD_TOKENS, BenchSettings, merge_sources, write_atomic
from .generation import Generation
from .llama_peers import LLAMA_PEERS, LlamaPeer
from .suites import BenchPrompt, Suite

log = logging.getLogger(__name__)


# Peer baselines, run in the same process on the same model: transformers' own decoding, and
# llama-cpp-python's beside the llama.cpp backend (bench/llama_peers.py).
PEERS: dict[str, str] = {
    "hf-generate": "transformers generate (plain decoding)",
    "hf-pld": "transformers prompt lookup (prompt_lookup_num_tokens=10, max_matching_ngram_size=3)",
    "hf-assisted": "transformers assisted generation with --draft-model (transformers' default settings)",
    **LLAMA_PEERS,
}

RECORDS = "records.jsonl"
MANIFEST = "run.json"

Message = dict[str, str]


# ------------------------------------------------------------------ settings





def resolve_methods(names: Sequence[str], *, draft_model: str | None = None) -> list[str]:
    """The methods to run: ``ar`` first (always, the baseline), then the rest as given, without duplicates.

    Names are registered methods or peer baselines; anything else is an error
    listing both. A method may carry its own options in brackets, a *variant*
    (:func:`split_variant`): ``ngram[nodes=8]`` runs beside ``ngram`` as a
    method of its own, so two settings of one method are measured in one
    interleaved run.

    >>> resolve_methods(["pld", "ar", "pld", "hf-generate"])
    ['ar', 'pld', 'hf-generate']
    >>> resolve_methods(["ngram", "ngram[nodes=8]", "ngram[ nodes=8 ]", "ngram[width=2,nodes=8]"])
    ['ar', 'ngram', 'ngram[nodes=8]', 'ngram[nodes=8,width=2]']
    """
    out = [BASELINE]
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        base, variant = split_variant(name)
        if variant:  # one spelling per variant: keys sorted, values as they parse back
            name = f"{base}[{','.join(f'{k}={render_value(v)}' for k, v in sorted(variant.items()))}]"
        if name in out:
            continue
        if base in PEERS or base == BASELINE:
            if variant:
                raise QuickdraftError(f"{base} takes no options (in {raw.strip()!r}); options are for our speculative "
                                      f"methods")
        else:
            try:
                get_method(base)
            except QuickdraftError:
                known = ", ".join([m.name for m in registered_methods()] + list(PEERS))
                raise QuickdraftError(f"unknown method {base!r}; available: {known}") from None
        if name == "hf-assisted" and not draft_model:
            raise QuickdraftError("hf-assisted needs --draft-model")
        out.append(name)
    return out


def check_method_options(names: Sequence[str], options: dict[str, dict[str, Any]]) -> None:
    """``--option METHOD.KEY=...`` must name a method of the run, and no two methods of a run may be
    the same method with the same options (they would share one drafter, and one's answers would
    teach the other's statistics before its turn on the same prompt).

    >>> check_method_options(["ar", "ngram", "ngram[nodes=8]"], {"": {}, "ngram": {"width": 2}})
    >>> check_method_options(["ar", "ngram", "ngram[nodes=8]"], {"ngram": {"nodes": 8}})
    Traceback (most recent call last):
    ...
    quickdraft.errors.QuickdraftError: ngram and ngram[nodes=8] are the same method with the same options; drop one
    """
    ours = [name for name in names if name not in PEERS]
    bases = {split_variant(name)[0] for name in ours}
    for group, values in options.items():
        if group and group not in bases:
            key = next(iter(values), "KEY")
            raise QuickdraftError(f"--option {group}.{key}: no method {group!r} in this run (its methods: "
                                  f"{', '.join(names)}); a variant's own options go in its brackets")
    seen: dict[tuple, str] = {}
    for name in ours:
        base, variant = split_variant(name)
        effective = {**options_for(base, options), **variant}
        key = (base, tuple(sorted((k, repr(v)) for k, v in effective.items())))
        if key in seen:
            raise QuickdraftError(f"{seen[key]} and {name} are the same method with the same options; drop one")
        seen[key] = name





# ------------------------------------------------------------------ backends


class Backend(Protocol):
    """A way to answer a conversation: one of our methods or a peer baseline."""

    name: str
    lossless: bool

    def generate(self, messages: list[Message], *, max_new_tokens: int, settings: BenchSettings) -> Generation: ...


class EngineMethod:
    """One of quickdraft's registered methods, through the public engine API.

    name: the method's name in the run (``method`` or a variant such as ``ngram[nodes=8]``).
    strict: the options set for this method alone (a variant's, ``--option method.key=...``): its
    drafter is built here, and one it does not take is an error (see :func:`~quickdraft.drafters.build_drafter`).
    """

    def __init__(self, engine, method: str, options: dict[str, Any] | None = None, *, name: str | None = None,
                 strict: Sequence[str] = ()) -> None:
        spec = get_method(method)
        self.engine, self.method, self.lossless = engine, method, spec.lossless
        self.name = name or method
        self.options = dict(options or {})
        if strict:
            engine.drafter(method, self.options, strict=strict)

    def generate(self, messages: list[Message], *, max_new_tokens: int, settings: BenchSettings) -> Generation:
        request = self.engine.prepare(messages, method=self.method, max_new_tokens=max_new_tokens,
                                      temperature=settings.temperature, seed=settings.seed)
        result = None
        start = time.perf_counter()
        for item in self.engine.run(request, options=self.options):
            result = item
        wall = time.perf_counter() - start
        s = result.stats
        return Generation(
            token_ids=list(result.token_ids), wall_s=wall, steps=s.steps, draft_s=s.draft_s, verify_s=s.verify_s,
            accepted_hist={str(k): v for k, v in sorted(s.accepted_hist.items())}, finish_reason=result.finish_reason,
            sources={k: dict(v) for k, v in s.sources.items()} or None,
        )


class HFPeer:
    """transformers ``generate`` on the engine's own model and tokenizer, with the engine's prompt ids.

    ``steps`` counts the target model's forward calls during ``generate`` (a
    forward pre-hook, removed afterwards): for transformers every such call
    emits at least one token (assisted generation has no separate prefill), so
    new tokens / steps is comparable to our ``mean_accepted``. The accepted-length
    histogram and the draft/verify split are not observable and stay None.
    """

    def __init__(self, engine, name: str, *, assistant=None, assistant_tokenizer=None) -> None:
        if name not in PEERS:
            raise QuickdraftError(f"unknown peer baseline {name!r}; available: {', '.join(PEERS)}")
        if getattr(engine.target, "backend", "transformers") != "transformers":
            raise QuickdraftError(f"{name} runs beside the transformers backend (add --backend transformers)")
        self.engine, self.name, self.lossless = engine, name, True
        self.extra: dict[str, Any] = {}
        if name == "hf-pld":
            self.extra = {"prompt_lookup_num_tokens": HF_PLD_TOKENS, "max_matching_ngram_size": HF_PLD_NGRAM}
        elif name == "hf-assisted":
            if assistant is None:
                raise QuickdraftError("hf-assisted needs --draft-model")
            self.extra = {"assistant_model": assistant}
            if assistant_tokenizer is not None:  # different vocabularies: universal assisted generation
                self.extra.update(tokenizer=engine.tokenizer, assistant_tokenizer=assistant_tokenizer)

    def generate(self, messages: list[Message], *, max_new_tokens: int, settings: BenchSettings) -> Generation:
        target = self.engine.target
        prompt_ids = self.engine.prepare(messages, max_new_tokens=max_new_tokens).prompt_ids
        # The engine stops at the context's end; so must transformers (same counting).
        room = min(max_new_tokens, target.max_context - len(prompt_ids))
        eos = sorted(target.eos_ids)
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=target.device)  # [1, P]
        kwargs: dict[str, Any] = dict(
            attention_mask=torch.ones_like(ids), max_new_tokens=room, eos_token_id=eos,
            pad_token_id=self.engine.tokenizer.pad_token_id if self.engine.tokenizer.pad_token_id is not None else eos[0],
            **self.extra,
        )
        if settings.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0)
            torch.manual_seed(settings.seed)
        with _count_calls(target.model) as calls, _stock_attention(target.model, self.extra.get("assistant_model")), \
                torch.inference_mode():
            _sync(target.device)
            start = time.perf_counter()
            out = target.model.generate(ids, **kwargs)  # [1, P + new]
            _sync(target.device)
            wall = time.perf_counter() - start
        new = cut_at_eos(out[0, len(prompt_ids):].tolist(), target.eos_ids)
        finish = "stop" if new and new[-1] in target.eos_ids else "length"
        return Generation(token_ids=new, wall_s=wall, steps=calls[0], finish_reason=finish)


@contextmanager
def _stock_attention(*models: torch.nn.Module | None) -> Iterator[None]:
    """transformers' own attention (``sdpa``) for a peer baseline's models, then the engine's back.

    The engine may load a model with its row-exact attention
    (:mod:`quickdraft.attention`); a peer baseline runs transformers as its
    users would.
    """
    swapped = []
    try:
        for model in models:
            ours = None if model is None else getattr(model.config, "_attn_implementation", None)
            if ours not in (None, "sdpa"):
                model.set_attn_implementation("sdpa")
                swapped.append((model, ours))
        yield
    finally:
        for model, ours in swapped:
            model.set_attn_implementation(ours)


def cut_at_eos(tokens: Sequence[int], eos_ids: frozenset[int] | set[int]) -> list[int]:
    """Tokens up to and including the first EOS (our engine's counting).

    >>> cut_at_eos([5, 2, 0, 0], {2})
    [5, 2]
    """
    out = []
    for token in tokens:
        out.append(int(token))
        if token in eos_ids:
            break
    return out


@contextmanager
def _count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    calls = [0]

    def hook(*_args) -> None:
        calls[0] += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_backends(engine, names: Sequence[str], *, options: dict[str, dict[str, Any]] | None = None,
                   draft_model: str | None = None) -> list[Backend]:
    """A backend per method name (``resolve_methods`` order).

    For hf-assisted the draft model is loaded in the engine's dtype and device.
    Our methods get ``draft_model`` among their options (drafters that do not
    use it ignore it).
    """
    options = options or {"": {}}
    assistant = assistant_tokenizer = None
    if "hf-assisted" in names:
        from ..models import load_model

        draft = load_model(draft_model, dtype=str(engine.target.dtype).replace("torch.", ""),
                           device=str(engine.target.device))
        assistant = draft.model
        if draft.tokenizer.get_vocab() != engine.tokenizer.get_vocab():
            assistant_tokenizer = draft.tokenizer
    backends: list[Backend] = []
    for name in names:
        if name in LLAMA_PEERS:
            backends.append(LlamaPeer(engine, name))
        elif name in PEERS:
            backends.append(HFPeer(engine, name, assistant=assistant, assistant_tokenizer=assistant_tokenizer))
        else:  # a variant's own options win over --option's
            method, variant = split_variant(name)
            opts = {**options_for(method, options), **variant}
            if draft_model:
                opts.setdefault("draft_model", draft_model)
            own = [*options.get(method, {}), *variant]
            backends.append(EngineMethod(engine, method, opts, name=name, strict=own))
    return backends


# ------------------------------------------------------------------ records


class RecordLog:
    """records.jsonl: one JSON line per (repeat, prompt, method), flushed as written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self, *, repair: bool = False) -> list[dict[str, Any]]:
        """Every complete record. A torn last line (a kill mid-write) is ignored, and cut off if ``repair``.

        A bad line anywhere else is an error naming its line number.
        """
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records, good_end = [], 0
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if not line.strip():
                good_end += len(line) + (0 if last else 1)
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not {"repeat", "prompt_id", "method"} <= set(record):
                    raise ValueError("not a record")
            except (ValueError, UnicodeDecodeError):
                if last:  # torn by an interruption: the prompt is simply not done
                    break
                raise QuickdraftError(f"{self.path}:{i + 1}: not a bench record; delete the file to start over") from None
            if last:  # complete JSON but no newline yet: keep it, and end the line before appending
                records.append(record)
                good_end = len(data)
                if repair:
                    with open(self.path, "ab") as fh:
                        fh.write(b"\n")
                break
            records.append(record)
            good_end += len(line) + 1
        if repair and good_end < len(data):
            log.warning("%s: dropping an incomplete last line (an interrupted write)", self.path)
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)
        return records

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def record_key(record: dict[str, Any]) -> tuple[int, str, str]:
    return int(record["repeat"]), str(record["prompt_id"]), str(record["method"])


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


# ------------------------------------------------------------------ the loop


class Progress(Protocol):
    """What the runner reports while it works (the CLI draws a progress bar from it)."""

    def start(self, total: int, done: int) -> None: ...

    def update(self, label: str) -> None: ...

    def advance(self) -> None: ...


class Runner:
    """Runs a suite through backends, interleaved per prompt, appending records to a log."""

    def __init__(self, backends: Sequence[Backend], suite: Suite, settings: BenchSettings, tokenizer) -> None:
        names = [b.name for b in backends]
        if not names or names[0] != BASELINE:
            raise ValueError("the baseline `ar` must be the first backend")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate backends: {names}")
        self.backends, self.suite, self.settings, self.tokenizer = list(backends), suite, settings, tokenizer

    def plan(self) -> list[tuple[int, str, str]]:
        """(repeat, prompt id, method) in measurement order: per prompt every method, starting with the
        next one at each prompt (see the module's docstring)."""
        names, prompts = [b.name for b in self.backends], self.suite.prompts
        plan = []
        for r in range(self.settings.repeats):
            for i, prompt in enumerate(prompts):
                k = (r * len(prompts) + i) % len(names)
                plan += [(r, prompt.id, name) for name in names[k:] + names[:k]]
        return plan

    def warm_up(self, progress: Progress | None = None) -> dict[str, float]:
        """One short generation per backend before measuring; returns peak RSS (MB) after each."""
        first = self.suite.prompts[0]
        rss = {}
        for backend in self.backends:
            if progress:
                progress.update(f"warm-up {backend.name}")
            backend.generate([{"role": "user", "content": first.turns[0]}],
                             max_new_tokens=min(16, self.settings.max_new_tokens), settings=self.settings)
            rss[backend.name] = peak_rss_mb()
        return rss

    def run(self, log: RecordLog, done: set[tuple[int, str, str]], progress: Progress | None = None) -> None:
        """Measure every planned (repeat, prompt, method) not in ``done``, appending one record each."""
        by_id = {p.id: p for p in self.suite.prompts}
        backends = {b.name: b for b in self.backends}
        for key in self.plan():
            if key in done:
                continue
            repeat, prompt_id, method = key
            if progress:
                progress.update(f"{method} · {by_id[prompt_id].category} #{prompt_id}")
            record = self.answer(backends[method], by_id[prompt_id], repeat)
            log.append(record)
            done.add(key)
            if progress:
                progress.advance()

    def answer(self, backend: Backend, prompt: BenchPrompt, repeat: int) -> dict[str, Any]:
        """Answer every turn of a prompt, each turn seeing this backend's own earlier answers."""
        messages: list[Message] = []
        turns = []
        for text in prompt.turns:
            messages.append({"role": "user", "content": text})
            gen = backend.generate(list(messages), max_new_tokens=self.settings.max_new_tokens,
                                   settings=self.settings)
            # Every backend's answer is decoded the same way, so equal ids give equal next turns.
            answer = self.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
            messages.append({"role": "assistant", "content": answer})
            turns.append({**asdict(gen), "new_tokens": len(gen.token_ids), "text": answer})
        return make_record(repeat, prompt, backend.name, turns)


def make_record(repeat: int, prompt: BenchPrompt, method: str, turns: list[dict[str, Any]]) -> dict[str, Any]:
    """One records.jsonl line: the per-turn results and their totals."""

    def total(name: str) -> float | int | None:
        values = [t[name] for t in turns]
        return None if any(v is None for v in values) else sum(values)

    hist: dict[str, int] | None = {}
    for t in turns:
        if t["accepted_hist"] is None:
            hist = None
            break
        for k, v in t["accepted_hist"].items():
            hist[k] = hist.get(k, 0) + v
    return {
        "repeat": repeat, "prompt_id": prompt.id, "category": prompt.category, "method": method,
        "new_tokens": total("new_tokens"), "wall_s": round(total("wall_s"), 6), "steps": total("steps"),
        "draft_s": total("draft_s"), "verify_s": total("verify_s"), "accepted_hist": hist,
        "sources": merge_sources(t.get("sources") for t in turns), "rss_mb": peak_rss_mb(), "turns": turns,
    }





# ------------------------------------------------------------------ a whole run


@dataclass(frozen=True)
class BenchConfig:
    """Everything ``quickdraft bench`` was asked (the CLI builds one of these)."""

    methods: tuple[str, ...] = (BASELINE,)
    suite: str = "builtin"
    per_category: int | None = None
    categories: tuple[str, ...] | None = None
    settings: BenchSettings = field(default_factory=BenchSettings)
    model: str = "smollm2-135m-instruct"
    draft_model: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    backend: str = "auto"  # what runs the model (quickdraft.backends)
    out: Path = Path("bench-results")
    resume: bool = False
    force: bool = False
    resume_anywhere: bool = False  # resume although code, library versions or the CPU differ from the run's


@dataclass
class Prepared:
    """A validated run, before anything is loaded or written."""

    config: BenchConfig
    suite: Suite
    methods: list[str]
    done: list[dict[str, Any]]  # records already in out/records.jsonl (resume)


def prepare(config: BenchConfig) -> Prepared:
    """Validate a run without loading a model or writing a file: suite, filter, methods, output folder."""
    from .suites import load_suite

    suite = load_suite(config.suite).select(per_category=config.per_category, categories=config.categories)
    names = resolve_methods(config.methods, draft_model=config.draft_model)
    check_method_options(names, config.options)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise QuickdraftError(f"--out {out} is a file, not a folder")
    log_ = RecordLog(out / RECORDS)
    has_run = (out / MANIFEST).exists() or log_.path.exists()
    if out.is_dir() and (out / LOCK).exists():
        with _locked(out):  # refused now, before anything loads, if another run holds it
            pass
    if not has_run and out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise QuickdraftError(f"--out {out} is not empty and holds no bench run; its files would be overwritten: "
                              f"choose a new or empty folder")
    done: list[dict[str, Any]] = []
    if has_run and config.force:
        pass  # started over in run_bench, once everything has loaded
    elif has_run and not config.resume:
        raise QuickdraftError(f"{out} already holds a bench run; pass --resume to continue it, --force to start over, "
                              f"or choose another --out")
    elif has_run:
        manifest = _read_manifest(out / MANIFEST)
        expected = manifest_for(config, suite, names)
        diff = [k for k in expected if manifest.get(k) != expected[k] and k not in ENVIRONMENT]
        if diff:
            raise QuickdraftError(f"cannot resume {out}: the run was started with different {', '.join(diff)}; "
                                  f"repeat its options or use --force to start over")
        moved = [k for k in ENVIRONMENT if manifest.get(k) != expected[k]]
        if moved and not config.resume_anywhere:
            raise QuickdraftError(f"cannot resume {out}: its measurements were made with another "
                                  f"{', '.join(moved)} ({'; '.join(f'{manifest.get(k)} -> {expected[k]}' for k in moved)}); "
                                  f"mixing them would compare different things. Use --force to start over, or "
                                  f"--resume-anywhere to mix them anyway")
        done = log_.read()
        planned = {(r, p.id, m) for r in range(config.settings.repeats) for p in suite.prompts for m in names}
        keys = [record_key(r) for r in done]
        stray = [k for k in keys if k not in planned]
        if stray or len(set(keys)) != len(keys):
            raise QuickdraftError(f"{log_.path} does not match this run (unexpected or repeated records); "
                                  f"use --force to start over")
    return Prepared(config=config, suite=suite, methods=names, done=done)


def manifest_for(config: BenchConfig, suite: Suite, names: Sequence[str]) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption (the run's options, then the
    environment that made its measurements: :data:`ENVIRONMENT`)."""
    from .. import __version__
    from ..profile import cpu_kernels, machine_name

    from ..backends import choose_backend

    versions = {"quickdraft": __version__, "torch": torch.__version__}
    try:
        import llama_cpp

        versions["llama_cpp"] = llama_cpp.__version__
    except ImportError:
        pass
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    return {
        "model": config.model, "backend": choose_backend(config.model, config.backend, device=config.device,
                                                       dtype=config.dtype),
        "draft_model": config.draft_model, "dtype": config.dtype, "device": config.device,
        "threads": config.threads, "suite": suite.name, "suite_fingerprint": suite.fingerprint(),
        "prompts": [p.id for p in suite.prompts], "methods": list(names), "options": _clean(config.options),
        **asdict(config.settings),
        "versions": versions, "code": _code_version(), "machine": machine_name(config.device),
        "kernels": cpu_kernels(config.device),
    }


ENVIRONMENT = ("versions", "code", "machine", "kernels")  # what measured the run, besides its options
LOCK = ".lock"


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """The git commit of quickdraft's checkout (with ``+dirty`` for uncommitted changes), or its version."""
    from .. import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not top or Path(top).resolve() != root:  # an installed copy (inside someone else's repository, say)
            return __version__
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = dirty = ""
    return f"{commit}{'+dirty' if dirty else ''}" if commit else __version__


def _clean(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Options without empty groups, so ``{}`` and ``{"": {}}`` mean the same."""
    return {k: dict(v) for k, v in sorted(options.items()) if v}


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise QuickdraftError(f"cannot read {path}: {exc}; use --force to start over") from exc
    return data if isinstance(data, dict) else {}





def run_bench(prepared: Prepared, *, engine=None, backends: Sequence[Backend] | None = None,
              progress: Progress | None = None, command: str | None = None) -> dict[str, Any]:
    """Load, warm up, measure (resuming where records exist), then write results.json, report.md and plots.

    ``engine``/``backends`` may be given (tests, or a caller that already holds
    a model); otherwise they are built from the config.
    """

    config, suite = prepared.config, prepared.suite
    if engine is None:
        from ..engine import load

        engine = load(config.model, dtype=config.dtype, device=config.device, threads=config.threads,
                      backend=config.backend, tune_memory=True)
    if backends is None:
        backends = build_backends(engine, prepared.methods, options=config.options, draft_model=config.draft_model)
    # Every first turn must fit the model: fail before anything is measured or written.
    for prompt in suite.prompts:
        engine.prepare(_probe_messages(prompt), max_new_tokens=config.settings.max_new_tokens)
    runner = Runner(backends, suite, config.settings, engine.tokenizer)
    already = 0 if config.force else len(prepared.done)
    if progress:
        progress.start(len(runner.plan()), already)
    rss = runner.warm_up(progress) if already < len(runner.plan()) else {}

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        return _measure_and_report(prepared, engine, backends, runner, rss, progress, command)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock file: a second run on the same folder is refused, not interleaved."""
    with open(out / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QuickdraftError(f"another bench run is writing to {out}; wait for it or choose another --out") from None
        yield


def _measure_and_report(prepared: Prepared, engine, backends, runner, rss, progress, command) -> dict[str, Any]:
    from . import report

    config, suite = prepared.config, prepared.suite
    out = Path(config.out)
    log_ = RecordLog(out / RECORDS)
    if config.force:
        for name in (RECORDS, MANIFEST, "results.json", "report.md", "speedup.png", "accepted_hist.png"):
            (out / name).unlink(missing_ok=True)
    done = {record_key(r) for r in log_.read(repair=True)}
    manifest = manifest_for(config, suite, prepared.methods)
    if not (out / MANIFEST).exists():
        write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    runner.run(log_, done, progress)

    info = report.RunInfo(
        model=engine.model_name, dtype=str(engine.target.dtype).replace("torch.", ""),
        device=str(engine.target.device), threads=torch.get_num_threads(), suite=suite.name,
        settings=config.settings, lossless={b.name: b.lossless for b in backends},
        categories=suite.categories, prompts=len(suite.prompts), options=_clean(config.options),
        exact=engine.target.exact,
        draft_model=config.draft_model, warmup_rss_mb=rss, peak_rss_mb=peak_rss_mb(), command=command,
    )
    results = report.aggregate(log_.read(), info)
    report.write_all(out, results)
    return results


def _probe_messages(prompt: BenchPrompt) -> list[Message]:
    """The first turn, plus a placeholder earlier exchange for multi-turn prompts (checks the chat template)."""
    if len(prompt.turns) == 1:
        return [{"role": "user", "content": prompt.turns[0]}]
    return [{"role": "user", "content": prompt.turns[0]}, {"role": "assistant", "content": "..."},
            {"role": "user", "content": prompt.turns[1]}]


__all__ = [
    "BASELINE", "PEERS", "Backend", "BenchConfig", "BenchSettings", "EngineMethod", "Generation", "HFPeer",
    "Prepared", "Progress", "RecordLog", "Runner", "build_backends", "cut_at_eos", "make_record", "merge_sources",
    "options_for",
    "parse_options", "prepare", "resolve_methods", "run_bench",
]
