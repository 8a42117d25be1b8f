"""The ``quickdraft`` command: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .errors import QuickdraftError
from .models import DEFAULT_MODEL

DTYPES = click.Choice(["auto", "float32", "bfloat16", "float16"])


class QuickdraftGroup(click.Group):
    """Turns QuickdraftError into a one-line message and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QuickdraftError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=QuickdraftGroup)
@click.version_option(package_name="quickdraft")
def main() -> None:
    """quickdraft: faster decoding that never changes what the model generates.

    \b
    Effects on this machine, as every command here loads a model:
      - on a CPU with transformers, glibc's malloc keeps freed memory for the next pass
        (faster prefills; QUICKDRAFT_KEEP_MEMORY=0 turns it off);
      - drafters sized by the machine's pass latency measure it once per model, dtype and CPU,
        and llama.cpp checks its rows once per file, build and CPU; both are cached under
        QUICKDRAFT_CACHE (default ~/.cache/quickdraft).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("quickdraft: %(message)s"))
    logger = logging.getLogger("quickdraft")
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise QuickdraftError("give the prompt as an argument or with --prompt-file, not both")
    if prompt_file == "-":
        return sys.stdin.read()
    if prompt_file is not None:
        try:
            return Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise QuickdraftError(f"cannot read prompt file {prompt_file}: {exc}") from exc
    if prompt is None:
        raise QuickdraftError("no prompt: pass it as an argument, or use --prompt-file PATH (or - for stdin)")
    return prompt


def _stats_line(result) -> str:
    s = result.stats
    return (
        f"[{result.method}] {s.new_tokens} tokens in {s.wall_s:.2f}s = {s.tokens_per_s:.1f} tok/s; "
        f"{s.steps} target passes, mean accepted {s.mean_accepted:.2f}; "
        f"prompt {s.prompt_tokens} tokens; draft {s.draft_s:.2f}s, verify {s.verify_s:.2f}s"
        + (f"; {_sources_text(s.sources)}" if s.sources else "")
        + ("" if result.exact else "; exactness NOT guaranteed here")
    )


def _warn_if_not_exact(engine) -> None:
    """One line on stderr when this machine cannot promise output equal to plain decoding (quickdraft.exactness)."""
    from .exactness import not_exact_message

    message = not_exact_message(engine.target)
    if message:
        click.echo("warning: " + message, err=True)


def _sources_text(sources: dict[str, dict[str, int]]) -> str:
    """Where the drafts came from (auto): ``sources: plain 7 steps, pld 12 steps 31/40 accepted``."""
    parts = []
    for name, row in sources.items():
        if row["chosen"]:
            accepted = f" {row['accepted']}/{row['nodes']} accepted" if row["nodes"] else ""
            parts.append(f"{name} {row['chosen']} steps{accepted}")
    return "sources: " + (", ".join(parts) or "none")


BACKEND_HELP = ("what runs the model: llamacpp (GGUF as shipped, llama.cpp's CPU kernels), transformers, or auto "
                "(llamacpp for a GGUF file or alias on the CPU when installed)")


def backend_option(command):
    return click.option("--backend", type=click.Choice(["auto", "transformers", "llamacpp"]), default="auto",
                        show_default=True, help=BACKEND_HELP)(command)


@main.command()
@click.argument("prompt", required=False)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="alias, .gguf file, HF directory or hub id")
@click.option("--method", default="auto", show_default=True,
              help="decoding method (see `quickdraft methods`); `ar` is plain decoding")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off")
@click.option("--seed", type=int, default=None)
@click.option("--dtype", type=DTYPES, default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (torch's or llama.cpp's)")
@click.option("--system", default=None, help="system message")
@click.option("--no-chat", is_flag=True, help="raw completion, without the chat template")
@click.option("--stop", multiple=True, help="stop string (repeatable)")
@click.option("--prompt-file", default=None, help="read the prompt from a file, or - for stdin")
@click.option("--stats", "show_stats", is_flag=True, help="print a stats line to stderr")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of streaming text")
@click.option("--adapter", default=None, help="trained drafter adapter (.safetensors) for ppd/heads "
              "[default: the one shipped for the model]")
@click.option("--datastore", default=None, help="retrieval datastore for rest (see `quickdraft index build`) "
              "[default: the one shipped for the model]")
@click.option("--draft-model", default=None, help="draft model for draft/draft-tree (same forms as --model)")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="drafter option (repeatable); e.g. k=4, tree=true, skip=4,6,8")
@backend_option
def generate(prompt, model, method, max_new_tokens, temperature, top_p, top_k, seed, dtype, threads, system,
             no_chat, stop, prompt_file, show_stats, as_json, adapter, datastore, draft_model, option_pairs,
             backend) -> None:
    """Generate an answer to PROMPT, streamed as it is produced."""
    from .drafters import get_method
    from .engine import load

    text = _read_prompt(prompt, prompt_file)
    if not text.strip():
        raise QuickdraftError("the prompt is empty")
    get_method(method)  # fail on an unknown method before loading anything
    from .options import options_for, parse_options

    groups = parse_options(option_pairs)  # every --option is for this method
    other = [g for g in groups if g not in ("", method)]
    if other:
        raise QuickdraftError(f"--option {other[0]}.KEY is for method {other[0]!r}, not {method!r}; "
                              f"use --option KEY=VALUE")
    engine = load(model, dtype=dtype, threads=threads, backend=backend, tune_memory=True)
    _warn_if_not_exact(engine)
    kwargs = dict(method=method, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                  top_k=top_k, seed=seed, system=system, chat=not no_chat, stop=list(stop))
    if adapter is not None:
        kwargs["options"] = {"adapter": adapter}
    if datastore is not None:
        kwargs["options"] = {**kwargs.get("options", {}), "datastore": datastore}
    if draft_model is not None or option_pairs:
        extra = options_for(method, groups)
        if draft_model is not None:
            extra["draft_model"] = draft_model
        kwargs["options"] = {**kwargs.get("options", {}), **extra}
        # an --option the method does not take is an error, not ignored
        engine.drafter(method, kwargs["options"], strict=[*groups.get("", {}), *groups.get(method, {})])
    result = None
    for item in engine.events(text, **kwargs):
        if isinstance(item, str):
            if not as_json:
                click.echo(item, nl=False)
        else:
            result = item
    if as_json:
        data = result.to_dict()
        data["stats"] = {k: data["stats"][k] for k in
                         ("prompt_tokens", "new_tokens", "steps", "mean_accepted", "tokens_per_s", "wall_s",
                          "prefill_s", "draft_s", "verify_s", "accepted_hist", "sources") if k in data["stats"]}
        click.echo(json.dumps(data, ensure_ascii=False))
    else:
        click.echo()
    if show_stats:
        click.echo(_stats_line(result), err=True)


@main.command()
def methods() -> None:
    """List the decoding methods."""
    from .backends import backends, installed
    from .drafters import methods as all_methods

    names = [b.name for b in backends()]
    here = set(installed())
    click.echo(f"{'method':<12} {'':<9} {'  '.join(names)}")
    for spec in all_methods():
        runs = "  ".join(("yes" if spec.runs_on(b.capabilities) else "-").center(len(b.name)) for b in backends())
        click.echo(f"{spec.name:<12} {'lossless' if spec.lossless else 'LOSSY':<9} {runs}  {spec.description}")
    click.echo("combine methods with '+' (e.g. pld+recycle): one tree merged from their drafts")
    missing = [name for name in names if name not in here]
    if missing:
        click.echo(f"not installed here: {', '.join(missing)} (`make setup` installs every backend)")


@main.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@click.option("--dtype", type=DTYPES, default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (torch's or llama.cpp's)")
@click.option("--refresh", is_flag=True, help="measure again even if this machine's profile is cached")
@backend_option
def profile(model, dtype, threads, refresh, backend) -> None:
    """Show (measuring once) how verify latency grows with draft nodes here, and the node budget."""
    from .engine import load
    from .profile import load_or_measure
    from .sizing import node_budget

    engine = load(model, dtype=dtype, threads=threads, backend=backend, tune_memory=True)
    prof = load_or_measure(engine.target, refresh=refresh)
    click.echo(f"{prof.key.model} ({prof.key.dtype}, {prof.key.threads} threads) on {prof.key.machine}"
               + ("" if prof.quiet else "  [measured while the machine was busy]"))
    long = prof.long_seconds
    click.echo(f"after {prof.context} cached tokens" + (f", and after {prof.long_context}" if long else ""))
    click.echo("draft nodes   ms/pass   x plain" + ("   ms/pass   x plain" if long else ""))
    for i, (nodes, seconds) in enumerate(zip(prof.nodes, prof.seconds)):
        line = f"{nodes:>11} {seconds * 1000:>9.1f} {seconds / prof.seconds[0]:>9.2f}"
        if long:
            line += f" {long[i] * 1000:>9.1f} {long[i] / long[0]:>9.2f}"
        click.echo(line)
    click.echo(f"node budget before acceptance statistics: {node_budget(engine.target)}")


DEMO_PROMPT = """Here is a short text. Rewrite it exactly, but replace every "cat" with "dog".

The cat sat on the mat. The cat was happy, because the mat was warm and the sun was shining through the window.
Later the cat went to the kitchen, where the cat found a bowl of milk. The cat drank the milk and went back to the mat.
In the evening the cat slept on the mat, and the cat dreamed of the kitchen, the milk and the warm sun."""


@main.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@click.option("--method", default="auto", show_default=True, help="the accelerated method to compare")
@click.option("--dtype", type=DTYPES, default="auto", show_default=True)
@click.option("--max-new-tokens", type=int, default=160, show_default=True)
@backend_option
def demo(model, method, dtype, max_new_tokens, backend) -> None:
    """Generate one answer plainly and once accelerated; compare speed and output."""
    from .engine import load

    engine = load(model, dtype=dtype, backend=backend, tune_memory=True)
    click.echo(f"model {engine.model_name} ({engine.target.dtype}, {engine.target.backend}); prompt: an editing task that copies its input\n")
    engine.generate(DEMO_PROMPT, method="ar", max_new_tokens=8)  # warm-up
    plain = engine.generate(DEMO_PROMPT, method="ar", max_new_tokens=max_new_tokens)
    fast = engine.generate(DEMO_PROMPT, method=method, max_new_tokens=max_new_tokens)
    click.echo(fast.text.strip() + "\n")
    click.echo(_stats_line(plain))
    click.echo(_stats_line(fast))
    same = plain.token_ids == fast.token_ids
    speedup = fast.stats.tokens_per_s / plain.stats.tokens_per_s if plain.stats.tokens_per_s else 0.0
    click.echo(f"\nspeedup {speedup:.2f}x, mean accepted {fast.stats.mean_accepted:.2f} tokens per pass, "
               f"outputs identical: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


def _split_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@main.command()
@click.option("--methods", "method_list", default="ar,pld", show_default=True,
              help="comma-separated methods; `ar` always runs first as the baseline; peer baselines: "
                   "hf-generate, hf-pld, hf-assisted (needs --draft-model); a method with its own options in "
                   "brackets runs as a method of its own (quoted: 'ngram,ngram[nodes=8]')")
@click.option("--suite", default="builtin", show_default=True,
              help="builtin, humaneval, or a .jsonl file (MT-bench/Spec-Bench: question_id, category, turns)")
@click.option("--per-category", type=int, default=None, help="only the first N prompts of each category")
@click.option("--categories", default=None, help="comma-separated categories to run (default: all)")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="per turn")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True, help="repeat the whole interleaved pass")
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@click.option("--draft-model", default=None, help="draft model for methods that use one; enables hf-assisted")
@click.option("--datastore", default=None, help="retrieval datastore for methods that use one")
@click.option("--adapter", default=None, help="trained drafter adapter for methods that use one")
@click.option("--option", "option_pairs", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="drafter option for every method, or for one method (repeatable); e.g. pld.k=8")
@click.option("--dtype", type=DTYPES, default="auto", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (torch's or llama.cpp's)")
@click.option("--out", default="bench-results", show_default=True, help="output folder")
@click.option("--resume", is_flag=True, help="continue an interrupted run in --out")
@click.option("--force", is_flag=True, help="discard an earlier run in --out and start over")
@click.option("--resume-anywhere", is_flag=True,
              help="with --resume: continue although the code, torch/transformers or the CPU changed")
@backend_option
@click.pass_context
def bench(ctx, method_list, suite, per_category, categories, max_new_tokens, temperature, seed, repeats, model,
          draft_model, datastore, adapter, option_pairs, dtype, device, threads, out, resume, force,
          resume_anywhere, backend) -> None:
    """Measure methods against plain decoding: speedup, accepted tokens, exact match, per category."""
    import shlex

    from rich.console import Console

    from .bench import BenchConfig, BenchSettings, prepare, run_bench
    from .bench.report import RichProgress, summary_table
    from .options import parse_options, split_methods

    if resume and force:
        raise QuickdraftError("--resume and --force contradict each other; pick one")
    options = parse_options(option_pairs)
    for key, value in (("datastore", datastore), ("adapter", adapter)):
        if value is not None:
            options[""][key] = value
    config = BenchConfig(
        methods=tuple(split_methods(method_list)), suite=suite, per_category=per_category,
        categories=None if categories is None else tuple(_split_list(categories)),
        settings=BenchSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, repeats=repeats),
        model=model, draft_model=draft_model, dtype=dtype, device=device, threads=threads, options=options,
        backend=backend,
        out=Path(out), resume=resume, force=force, resume_anywhere=resume_anywhere,
    )
    prepared = prepare(config)  # input errors surface here, before loading or writing anything (an option a method does not take: once it is built, still before anything is written)
    given = [p for p in ctx.command.params
             if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    words = ["quickdraft", "bench"]
    for p in given:
        values = ctx.params[p.name] if p.multiple else [ctx.params[p.name]]
        for v in values:
            words += [p.opts[0]] if p.is_flag else [p.opts[0], str(v)]
    progress = RichProgress(Console(stderr=True))
    try:
        results = run_bench(prepared, progress=progress, command=shlex.join(w for w in words
                                                                             if w not in ("--resume", "--force",
                                                                                          "--resume-anywhere")))
    finally:
        progress.stop()
    Console().print(summary_table(results))
    click.echo(f"results: {Path(out) / 'results.json'}, {Path(out) / 'report.md'}, plots in {out}")


@main.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="alias, .gguf file, HF directory or hub id")
@click.option("--method", default=None, help="default decoding method; requests may pick another with "
                                              "\"method\"  [default: auto when available, else pld]")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (loopback by default)")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", envvar="QUICKDRAFT_API_KEY", default=None, show_envvar=True,
              help="require 'Authorization: Bearer KEY' on /v1 and /metrics")
@click.option("--max-concurrency", type=int, default=1, show_default=True,
              help="generations run at the same time (engines sharing the weights)")
@click.option("--max-batch", type=int, default=None,
              help="requests decoded together, one pass per step (continuous batching; llama.cpp) "
                   "[default: 8 on llama.cpp, else 1]")
@click.option("--speculation", type=click.Choice(["goodput", "always", "never"]), default="goodput",
              show_default=True, help="draft tokens a batched step verifies: chosen by goodput (SmartSpec), "
                                      "every one proposed, or none")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="requests that may wait; beyond it the server answers 429")
@click.option("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted [default: the context]")
@click.option("--max-tokens-limit", type=int, default=4096, show_default=True,
              help="largest max_tokens a request may ask for")
@click.option("--default-max-tokens", type=int, default=256, show_default=True,
              help="max_tokens of a request that gives none")
@click.option("--option", "option_pairs", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="drafter option for every method, or for one method (repeatable); e.g. pld.k=8")
@click.option("--methods", "offered", default=None, metavar="A,B,...",
              help="the methods requests may ask for [default: the default method and ar]")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="a Host header name requests may carry (repeatable; '*': any) [default: loopback names when "
                   "bound to loopback, else any]")
@click.option("--docs", is_flag=True, help="serve /docs, /redoc and /openapi.json (behind the API key)")
@click.option("--header-timeout", type=float, default=10.0, show_default=True,
              help="seconds a client may take to send its request headers")
@click.option("--body-timeout", type=float, default=30.0, show_default=True,
              help="seconds a client may take to send its request body (then 408)")
@click.option("--max-connections", type=int, default=256, show_default=True,
              help="open connections beyond which the server answers 503")
@click.option("--drafter-scope", type=click.Choice(["shared", "user"]), default="shared", show_default=True,
              help="drafters learn from every request (shared) or only from the same 'user' field's requests")
@click.option("--dtype", type=DTYPES, default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (torch's or llama.cpp's)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@backend_option
def serve(model, method, host, port, api_key, max_concurrency, max_batch, speculation, max_queue, max_prompt_tokens,
          max_tokens_limit,
          default_max_tokens, option_pairs, offered, allow_hosts, docs, header_timeout, body_timeout,
          max_connections, drafter_scope, dtype, threads, log_level, backend) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    from .options import parse_options
    from .engine import load
    from .server import ServerConfig, default_method
    from .server import serve as run_server

    from .server import LOOPBACK

    from .backends import choose_backend

    options = parse_options(option_pairs)
    on_llama = choose_backend(model, backend, dtype=dtype) == "llamacpp"
    if max_batch is None:
        max_batch = 8 if on_llama and max_concurrency == 1 else 1
    if max_batch > 1 and max_concurrency > 1:
        raise QuickdraftError("--max-batch and --max-concurrency above 1 exclude each other: batch requests, or run "
                              "engines side by side")
    hosts = tuple(f"[{h}]" if ":" in h and not h.startswith("[") else h for h in allow_hosts)  # IPv6 as in Host
    hosts = hosts or (LOOPBACK if host in LOOPBACK else ("*",))
    config = ServerConfig(  # every input error surfaces here, before loading the model
        default_method=method or default_method(), api_key=api_key, max_queue=max_queue,
        max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens, model_aliases=(model,), options=options,
        methods=tuple(offered.split(",")) if offered else (), allowed_hosts=hosts, docs=docs,
        header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections,
        drafter_scope=drafter_scope, max_batch=max_batch, speculation=speculation,
    )
    if max_concurrency <= 0:
        raise QuickdraftError(f"--max-concurrency must be positive, got {max_concurrency}")
    if max_concurrency > 1 and on_llama:
        raise QuickdraftError("--max-concurrency above 1 needs --backend transformers: a llama.cpp context holds "
                              "one generation's cache (use --max-batch to decode requests together)")
    engine = load(model, dtype=dtype, threads=threads, backend=backend, tune_memory=True)
    for name in config.methods:  # bad options fail now
        engine.drafter(name, config.options_for(name))
    click.echo(f"quickdraft: serving {engine.model_name} ({engine.target.dtype}) with method "
               f"{config.default_method} on http://{host}:{port}/v1", err=True)
    _warn_if_not_exact(engine)
    run_server(engine, config, host=host, port=port, max_concurrency=max_concurrency, log_level=log_level)


@main.command("bench-serve")
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@click.option("--concurrency", default="1,2,4,8,16", show_default=True, help="comma-separated client counts")
@click.option("--modes", default="one-at-a-time,never,always,goodput", show_default=True,
              help="server modes: one-at-a-time (today's FIFO server), never/always/goodput (batched, with that "
                   "speculation)")
@click.option("--method", default="ngram", show_default=True, help="the drafting method of every mode")
@click.option("--requests-per-client", type=int, default=2, show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--suite", default="builtin", show_default=True, help="prompts: builtin, humaneval or a .jsonl file")
@click.option("--per-category", type=int, default=2, show_default=True, help="prompts per category of the suite")
@click.option("--time-limit", type=float, default=600.0, show_default=True,
              help="seconds per level after which clients send no new request")
@click.option("--threads", type=int, default=None, help="CPU threads (llama.cpp's or torch's)")
@click.option("--dtype", type=DTYPES, default="auto", show_default=True)
@click.option("--out", default="bench-serve-results", show_default=True, help="output folder")
@backend_option
def bench_serve(model, concurrency, modes, method, requests_per_client, max_tokens, suite, per_category, time_limit,
                threads, dtype, out, backend) -> None:
    """Load-test the server: throughput, time to first token and per output token, per concurrency level."""
    import shlex

    from .bench.serve_load import LoadConfig, run_load, write_report
    from .bench.suites import load_suite
    from .engine import load
    from .server import ServerConfig

    try:
        levels = tuple(int(c) for c in _split_list(concurrency))
    except ValueError:
        raise QuickdraftError(f"--concurrency takes comma-separated integers, got {concurrency!r}") from None
    config = LoadConfig(concurrency=levels, modes=tuple(_split_list(modes)), method=method,
                        requests_per_client=requests_per_client, max_tokens=max_tokens, time_limit_s=time_limit)
    prompts = [p.turns[0] for p in load_suite(suite).select(per_category=per_category).prompts]
    base = ServerConfig(default_method=method, methods=(method, "ar"), max_queue=max(levels) * 2)
    engine = load(model, dtype=dtype, threads=threads, backend=backend, tune_memory=True)
    _warn_if_not_exact(engine)
    results = run_load(engine, config, prompts, base=base, progress=lambda line: click.echo(line, err=True))
    write_report(results, Path(out), shlex.join(["quickdraft", "bench-serve", *sys.argv[2:]]))
    click.echo(f"results: {Path(out) / 'results.json'}, {Path(out) / 'report.md'}, {Path(out) / 'throughput.png'}")


@main.command()
@click.option("--kind", type=click.Choice(["ppd", "heads", "eagle"]), required=True,
              help="ppd: prompt-token embeddings; heads: Medusa-style heads; eagle: a one-layer feature drafter")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="alias, .gguf file, HF directory or hub id")
@click.option("--out", required=True, help="the adapter file to write (.safetensors)")
@click.option("--data", default="builtin", show_default=True,
              help="prompts the model answers for its own training data: builtin (247 requests), selfinstruct "
                   "(about 1,500: a second round works on the model's own first answers), or a .jsonl "
                   "({\"prompt\": ...}) or .txt (one per line) file")
@click.option("--steps", type=int, default=400, show_default=True, help="optimizer steps")
@click.option("--minutes", type=float, default=None, help="stop after this much training time")
@click.option("--lr", type=float, default=None,
              help="learning rate [default: 1e-2 for ppd, 2e-3 for heads, 1e-3 for eagle]")
@click.option("--anchors", type=int, default=48, show_default=True, help="positions trained per sequence per step")
@click.option("--sequences", type=int, default=1, show_default=True, help="sequences per step")
@click.option("--prompt-tokens", type=int, default=3, show_default=True, help="ppd: prompt tokens (tokens guessed)")
@click.option("--heads", type=int, default=3, show_default=True, help="heads: number of heads (tokens guessed)")
@click.option("--rank", type=int, default=128, show_default=True, help="heads: rank of each head's block")
@click.option("--answer-tokens", type=int, default=160, show_default=True,
              help="longest answer generated per training prompt")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=DTYPES, default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (torch's or llama.cpp's)")
@click.option("--token-input/--no-token-input", default=True, show_default=True,
              help="heads: also read the next (bonus) token's embedding")
@click.option("--vocab", type=int, default=8192, show_default=True,
              help="eagle: guesses come from this many of the tokens the model uses most in its answers")
@click.option("--intermediate", type=int, default=768, show_default=True, help="eagle: MLP width of its layer")
@click.option("--corpus", multiple=True, help="also train on this text (.txt, or .jsonl as for index build), "
              "teacher-forced; repeatable")
@click.option("--init", default=None, help="start from this adapter's parameters (continue training it)")
@click.option("--fresh", is_flag=True, help="ignore a checkpoint of an earlier run and start over")
def train(kind, model, out, data, steps, minutes, lr, anchors, sequences, prompt_tokens, heads, rank, answer_tokens,
          seed, dtype, threads, token_input, vocab, intermediate, corpus, init, fresh) -> None:
    """Train a ppd, heads or eagle adapter for a model by self-distillation (resumes from OUT.ckpt)."""
    from .training import train as run_training

    report = run_training(kind=kind, model=model, out=out, data=data, steps=steps, minutes=minutes, fresh=fresh,
                          dtype=dtype, threads=threads, lr=lr, anchors=anchors, sequences=sequences,
                          prompt_tokens=prompt_tokens, heads=heads, rank=rank, max_new_tokens=answer_tokens, seed=seed,
                          token_input=token_input, vocab=vocab, intermediate=intermediate, corpus=corpus, init=init)
    for line in report.lines():
        click.echo(line)


@main.group()
def index() -> None:
    """Retrieval datastores for the rest method."""


@index.command("build")
@click.argument("corpus", nargs=-1)
@click.option("--out", required=True, help="datastore directory to write")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="the model whose tokenizer to use")
@click.option("--answers", default=None,
              help="also index the model's own greedy answers to these prompts: builtin, selfinstruct or a file, "
                   "as for `quickdraft train --data` (generated once, cached with the training data)")
@click.option("--answer-tokens", type=int, default=160, show_default=True, help="--answers: longest answer")
@click.option("--dtype", type=DTYPES, default="auto", show_default=True, help="--answers: the model's dtype")
@click.option("--threads", type=int, default=None, help="--answers: torch CPU threads")
def index_build(corpus, out, model, answers, answer_tokens, dtype, threads) -> None:
    """Index CORPUS files (text, or JSONL with text/turns fields) and/or the model's own answers (--answers) for
    `generate --method rest --datastore OUT` (or as ngram's and recycle's prior: --option prior=OUT)."""
    from .datastore import index_corpus
    from .training.answers import index_answers

    if answers:
        meta = index_answers(answers, out, model=model, corpus=list(corpus), max_new_tokens=answer_tokens,
                             dtype=dtype, threads=threads)
    elif not corpus:
        raise click.UsageError("give CORPUS files, --answers DATA, or both")
    else:
        meta = index_corpus(list(corpus), out, model=model)
    origin = f"from {len(corpus)} file(s)" if not answers else f"({'; '.join(meta['sources'])})"
    click.echo(f"indexed {meta['tokens']} tokens in {meta['documents']} documents {origin} "
               f"with the tokenizer of {meta['model']} -> {out}")


if __name__ == "__main__":
    main()
