"""``quickdraft bench-serve``: the server under load from concurrent clients, over loopback.

For each server mode and each concurrency level C, the server is started in this process on a free
loopback port, C client threads replay the suite's prompts (streaming chat completions, greedy), and the
run reports total throughput (completion tokens per second of wall time), time to first token and time per
output token after the first (TPOT, p50 and p95), and whether every answer equals the same request's answer
from the one-at-a-time server. Modes::

    one-at-a-time   today's server: requests decoded one after another (FIFO queue)
    never           requests batched, plain steps
    always          requests batched, every draft token the method proposes verified
    goodput         requests batched, draft tokens chosen per step by goodput (SmartSpec)
"""

from __future__ import annotations

import json
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import QuickdraftError

MODES = ("one-at-a-time", "never", "always", "goodput")


@dataclass(frozen=True)
class LoadConfig:
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    modes: tuple[str, ...] = MODES
    method: str = "ngram"  # the drafter of the speculating modes (and of one-at-a-time)
    requests_per_client: int = 2
    max_tokens: int = 64
    time_limit_s: float = 600.0  # per level: clients stop sending new requests after it

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise QuickdraftError("concurrency levels must be positive integers")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise QuickdraftError(f"unknown mode {unknown[0]!r} (modes: {', '.join(MODES)})")
        if self.requests_per_client < 1 or self.max_tokens < 1 or self.time_limit_s <= 0:
            raise QuickdraftError("requests per client, max tokens and the time limit must be positive")


@dataclass
class RequestTiming:
    prompt: int  # index into the prompts
    ttft_s: float
    tpot_s: float | None  # None: one token only
    tokens: int
    text: str


@dataclass
class LevelResult:
    mode: str
    concurrency: int
    wall_s: float
    requests: list[RequestTiming] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        tokens = sum(r.tokens for r in self.requests)
        ttft = [r.ttft_s for r in self.requests]
        tpot = [r.tpot_s for r in self.requests if r.tpot_s is not None]
        return {"mode": self.mode, "concurrency": self.concurrency, "requests": len(self.requests),
                "errors": self.errors, "tokens": tokens, "wall_s": round(self.wall_s, 3),
                "tokens_per_s": round(tokens / self.wall_s, 2) if self.wall_s > 0 else 0.0,
                "ttft_p50_s": _pct(ttft, 50), "ttft_p95_s": _pct(ttft, 95),
                "tpot_p50_s": _pct(tpot, 50), "tpot_p95_s": _pct(tpot, 95)}


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))], 4)


def mode_config(mode: str, config: LoadConfig, base: Any) -> Any:
    """The server configuration of a mode (``base``: a ServerConfig with everything else)."""
    from dataclasses import replace

    batch = max(config.concurrency)
    methods = (config.method, "ar")
    if mode == "one-at-a-time":
        return replace(base, default_method=config.method, methods=methods, max_batch=1)
    return replace(base, default_method=config.method, methods=methods, max_batch=batch, speculation=mode)


def run_level(url: str, mode: str, concurrency: int, prompts: Sequence[str], config: LoadConfig,
              model: str) -> LevelResult:
    """C client threads, each sending ``requests_per_client`` streaming requests one after another."""
    import openai

    api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=config.time_limit_s)
    result = LevelResult(mode, concurrency, 0.0)
    lock = threading.Lock()
    deadline = time.perf_counter() + config.time_limit_s

    def client(c: int) -> None:
        for r in range(config.requests_per_client):
            if time.perf_counter() > deadline:
                return
            index = (c * config.requests_per_client + r) % len(prompts)
            try:
                timing = _one_request(api, model, prompts[index], config.max_tokens, index)
            except openai.OpenAIError:
                with lock:
                    result.errors += 1
                continue
            with lock:
                result.requests.append(timing)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - start
    return result


def _one_request(api, model: str, prompt: str, max_tokens: int, index: int) -> RequestTiming:
    sent = time.perf_counter()
    first = last = None
    text, tokens = "", 0
    stream = api.chat.completions.create(model=model, max_tokens=max_tokens, temperature=0, stream=True,
                                         messages=[{"role": "user", "content": prompt}],
                                         stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ttft = (first if first is not None else time.perf_counter()) - sent
    tpot = (last - first) / (tokens - 1) if first is not None and last is not None and tokens > 1 else None
    return RequestTiming(index, ttft, tpot, tokens, text)


def run_load(engine, config: LoadConfig, prompts: Sequence[str], *, base: Any,
             progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Every mode at every concurrency level, modes outermost (each server started once); the results."""
    from ..server import running

    levels: list[LevelResult] = []
    served: dict[str, str] = {}  # the batching each mode got (a backend that does not batch serves one at a time)
    for mode in config.modes:
        server_config = mode_config(mode, config, base)
        with running([engine], server_config) as url:
            import httpx

            served[mode] = f"max_batch={httpx.get(f'{url}/health').json()['max_batch']}"
            _one_request(_client(url), engine.model_name, prompts[0], 4, 0)  # warm-up
            for concurrency in config.concurrency:
                level = run_level(url, mode, concurrency, prompts, config, engine.model_name)
                levels.append(level)
                s = level.summary()
                progress(f"{mode:>14} C={concurrency:<3} {s['tokens_per_s']:7.1f} tok/s  TTFT p50 {s['ttft_p50_s']}s  "
                         f"TPOT p95 {s['tpot_p95_s']}s  errors {s['errors']}")
    return _results(levels, config, served, engine)


def _client(url: str):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _results(levels: list[LevelResult], config: LoadConfig, served: dict[str, str], engine) -> dict[str, Any]:
    reference: dict[int, str] = {}
    for level in levels:
        if level.mode == "one-at-a-time":
            for r in level.requests:
                reference.setdefault(r.prompt, r.text)
    rows = []
    for level in levels:
        row = level.summary()
        compared = [r for r in level.requests if r.prompt in reference]
        row["identical"] = (sum(r.text == reference[r.prompt] for r in compared), len(compared))
        rows.append(row)
    return {"config": asdict(config), "served": served, "levels": rows,
            "model": engine.model_name, "backend": getattr(engine.target, "backend", "transformers"),
            "threads": getattr(engine.target, "threads", None), "machine": platform.processor() or platform.machine()}


def write_report(results: dict[str, Any], out: Path, command: str) -> None:
    """results.json, report.md and throughput.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "command": command}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(markdown(results))
    plot(results, out / "throughput.png")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Serving under load: {results['model']} on {results['backend']}", "",
             f"Command: `{results.get('command', '')}`", "",
             "| mode | clients | tok/s | vs one-at-a-time | TTFT p50 / p95 (s) | TPOT p50 / p95 (ms) | identical | errors |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["concurrency"]: r["tokens_per_s"] for r in results["levels"] if r["mode"] == "one-at-a-time"}
    for r in results["levels"]:
        ratio = f"{r['tokens_per_s'] / base[r['concurrency']]:.2f}×" if base.get(r["concurrency"]) else "n/a"
        same, total = r["identical"]
        ms = [f"{1000 * v:.0f}" if v is not None else "n/a" for v in (r["tpot_p50_s"], r["tpot_p95_s"])]
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {ratio} | "
                     f"{r['ttft_p50_s']} / {r['ttft_p95_s']} | {ms[0]} / {ms[1]} | {same}/{total} | {r['errors']} |")
    lines += ["", "Servers: " + ", ".join(f"{m}: {s}" for m, s in results["served"].items()), ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), dpi=110, layout="constrained")
    left, right = fig.subplots(1, 2)
    for mode in dict.fromkeys(r["mode"] for r in results["levels"]):
        rows = [r for r in results["levels"] if r["mode"] == mode]
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["tokens_per_s"] for r in rows], marker="o", label=mode)
        right.plot(xs, [1000 * (r["tpot_p95_s"] or 0) for r in rows], marker="o", label=mode)
    for ax, title in ((left, "throughput (tokens/s)"), (right, "time per output token, p95 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    left.legend()
    fig.savefig(path)


__all__ = ["LoadConfig", "MODES", "markdown", "mode_config", "run_level", "run_load", "write_report"]
