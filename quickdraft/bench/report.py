"""From per-prompt records to results.json, report.md, plots and the terminal summary.

How the numbers are computed (also written into every report.md):

* a prompt's tokens/s = its new tokens (every turn; EOS counted, prompt not)
  / the wall-clock seconds of its decode calls (prefill included, tokenizing
  the prompt not); with ``--repeats`` the median over repeats;
* ``tokens_per_s`` of a group (a category, or all prompts) = the mean of its
  prompts' tokens/s;
* ``speedup`` = the method's ``tokens_per_s`` / ``ar``'s ``tokens_per_s`` over
  the same prompts (a ratio of means). ``speedup_total`` (in results.json) is
  the ratio of total tokens / total seconds instead;
* ``mean_accepted`` = total new tokens / total target forward passes that
  emitted tokens (bonus token included; ``ar`` scores 1.0);
* ``exact_match`` = the fraction of prompts whose token ids (every turn, every
  repeat) equal ``ar``'s; None (n/a) under sampling.
"""

from __future__ import annotations

import os

import datetime as _dt
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .common import BASELINE, HF_PLD_NGRAM, HF_PLD_TOKENS, BenchSettings, merge_sources, write_atomic

SPEEDUP_DEFINITION = (
    "speedup = mean over prompts of the method's tokens/s divided by the mean over the same prompts of ar's "
    "tokens/s; a prompt's tokens/s = new tokens (all turns, EOS included, prompt excluded) / wall-clock seconds "
    "of its decode calls, median over repeats"
)


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run besides the records."""

    model: str
    dtype: str
    device: str
    threads: int
    suite: str
    settings: BenchSettings
    lossless: dict[str, bool]  # method -> lossless, in run order (ar first)
    categories: list[str]
    prompts: int
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    exact: bool = True  # the engine's rows are promised equal to plain decoding's here (TargetModel.exact)
    draft_model: str | None = None
    warmup_rss_mb: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    command: str | None = None


# ------------------------------------------------------------------ aggregation (pure)


def aggregate(records: Sequence[dict[str, Any]], info: RunInfo) -> dict[str, Any]:
    """results.json's content from records.

    Only prompts for which both the method and ``ar`` have every repeat count,
    so a speedup always compares the same prompts.
    """
    repeats = info.settings.repeats
    # method -> prompt id -> repeat -> record
    table: dict[str, dict[str, dict[int, dict[str, Any]]]] = {m: {} for m in info.lossless}
    for r in records:
        if r["method"] in table:
            table[r["method"]].setdefault(str(r["prompt_id"]), {})[int(r["repeat"])] = r
    base = table.get(BASELINE, {})
    complete_base = {pid for pid, reps in base.items() if len(reps) == repeats}

    methods: dict[str, Any] = {}
    for method, lossless in info.lossless.items():
        prompts = {pid: reps for pid, reps in table[method].items() if len(reps) == repeats and pid in complete_base}
        entry: dict[str, Any] = {"lossless": lossless, "overall": _group(prompts, base, info.settings.greedy)}
        entry["categories"] = {
            cat: _group({pid: reps for pid, reps in prompts.items() if reps[0]["category"] == cat}, base,
                        info.settings.greedy)
            for cat in info.categories
        }
        if method in info.warmup_rss_mb:
            entry["warmup_rss_mb"] = info.warmup_rss_mb[method]
        methods[method] = entry

    from .. import __version__

    versions = {"quickdraft": __version__}
    for lib in ("torch", "transformers"):
        try:
            versions[lib] = __import__(lib).__version__
        except ImportError:  # pragma: no cover - both are dependencies
            pass
    return {
        "model": info.model, "dtype": info.dtype, "device": info.device, "threads": info.threads,
        "exact": info.exact,
        "suite": info.suite, "max_new_tokens": info.settings.max_new_tokens,
        "temperature": float(info.settings.temperature), "seed": info.settings.seed,
        "repeats": info.settings.repeats, "prompts": info.prompts, "categories": list(info.categories),
        "draft_model": info.draft_model, "options": info.options, "peak_rss_mb": info.peak_rss_mb,
        "speedup_definition": SPEEDUP_DEFINITION, "command": info.command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "versions": versions,
        "methods": methods,
    }


def _group(prompts: dict[str, dict[int, dict]], base: dict[str, dict[int, dict]], greedy: bool) -> dict[str, Any]:
    """The fields of one (method, group of prompts) cell."""
    n = len(prompts)
    if n == 0:
        return {"speedup": None, "tokens_per_s": None, "mean_accepted": None, "exact_match": None, "prompts": 0}
    ids = sorted(prompts)
    tps = statistics.fmean(_prompt_tps(prompts[p]) for p in ids)
    base_tps = statistics.fmean(_prompt_tps(base[p]) for p in ids)
    recs = [r for p in ids for r in prompts[p].values()]
    base_recs = [r for p in ids for r in base[p].values()]
    tokens, wall = sum(r["new_tokens"] for r in recs), sum(r["wall_s"] for r in recs)
    base_total = sum(r["new_tokens"] for r in base_recs) / sum(r["wall_s"] for r in base_recs)
    steps = None if any(r["steps"] is None for r in recs) else sum(r["steps"] for r in recs)
    exact = None
    if greedy:
        same = sum(all(_ids(prompts[p][k]) == _ids(base[p][k]) for k in prompts[p]) for p in ids)
        exact = same / n
    return {
        "speedup": _round(tps / base_tps),
        "tokens_per_s": _round(tps),
        "mean_accepted": _round(tokens / steps) if steps else None,
        "exact_match": _round(exact),
        "prompts": n,
        "speedup_total": _round((tokens / wall) / base_total),
        "tokens_per_s_total": _round(tokens / wall),
        "new_tokens": tokens,
        "steps": steps,
        "wall_s": _round(wall),
        "draft_s": _sum_or_none(recs, "draft_s"),
        "verify_s": _sum_or_none(recs, "verify_s"),
        "accepted_hist": _hist(recs),
        **_sources_field(recs),
    }


def _sources_field(recs: list[dict]) -> dict[str, Any]:
    """``{"sources": summed counters}`` for a method that reports where its drafts came from, else nothing."""
    sources = merge_sources(r.get("sources") for r in recs)
    return {"sources": sources} if sources else {}


def _prompt_tps(reps: dict[int, dict]) -> float:
    return statistics.median(r["new_tokens"] / r["wall_s"] for r in reps.values())


def _ids(record: dict) -> list[list[int]]:
    return [t["token_ids"] for t in record["turns"]]


def _sum_or_none(recs: list[dict], name: str) -> float | None:
    values = [r[name] for r in recs]
    return None if any(v is None for v in values) else _round(sum(values))


def _hist(recs: list[dict]) -> dict[str, int] | None:
    total: dict[int, int] = {}
    for r in recs:
        if r["accepted_hist"] is None:
            return None
        for k, v in r["accepted_hist"].items():
            total[int(k)] = total.get(int(k), 0) + v
    return {str(k): total[k] for k in sorted(total)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


# ------------------------------------------------------------------ output files


def write_all(out: Path, results: dict[str, Any]) -> None:
    """results.json, report.md, speedup.png and accepted_hist.png, each written whole or not at all."""
    out = Path(out)
    write_atomic(out / "results.json", json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    write_atomic(out / "report.md", markdown(results))
    plot_speedup(results, out / "speedup.png")
    plot_accepted(results, out / "accepted_hist.png")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _lossless(method: dict[str, Any], results: dict[str, Any]) -> str:
    """The lossless column: a lossless method on a machine whose rows are not checked exact says so."""
    if not method["lossless"]:
        return "no"
    return "yes" if results.get("exact", True) else "not here"


def _exact(cell: dict[str, Any]) -> str:
    if cell["exact_match"] is None:
        return "n/a"
    same = round(cell["exact_match"] * cell["prompts"])
    pct = f"{100 * cell['exact_match']:.0f}%"
    return pct if same == cell["prompts"] else f"{pct} ({same}/{cell['prompts']})"


def _split(cell: dict[str, Any]) -> str:
    if cell.get("draft_s") is None or cell.get("verify_s") is None or not cell.get("wall_s"):
        return "n/a"
    wall = cell["wall_s"]
    other = max(wall - cell["draft_s"] - cell["verify_s"], 0.0)
    return f"{100 * cell['draft_s'] / wall:.0f} / {100 * cell['verify_s'] / wall:.0f} / {100 * other / wall:.0f}"


def markdown(results: dict[str, Any]) -> str:
    """report.md: tables to paste into a README, and how every number was computed."""
    methods, cats = results["methods"], results["categories"]
    mode = "greedy" if results["temperature"] == 0 else f"sampling at temperature {results['temperature']:g}"
    lines = [
        f"# quickdraft bench: `{results['suite']}` suite, {results['model']}",
        "",
        f"{results['prompts']} prompts in {len(cats)} {'category' if len(cats) == 1 else 'categories'}, "
        f"up to {results['max_new_tokens']} new tokens per "
        f"turn, {mode}, {results['repeats']} repeat(s), {results['dtype']} on {results['device']} with "
        f"{results['threads']} thread(s). Peak memory of the process: {_fmt(results['peak_rss_mb'], '.0f', ' MB')}. "
        f"Measured {results['created']} with "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
    ]
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    if not results.get("exact", True):
        lines += ["", f"**Exactness is not guaranteed on this machine in {results['dtype']}** (on a CPU: no draft "
                  "layout passed its self-check, `quickdraft/exactness.py`; on a GPU it is not claimed), so a "
                  "lossless method's greedy output can differ from `ar`'s at near-ties; float32 is exact."]
    warm = {n: m["warmup_rss_mb"] for n, m in methods.items() if m.get("warmup_rss_mb") is not None}
    if warm:
        lines += ["", "Process peak memory (RSS high-water mark, so it only grows) after each method's warm-up: "
                  + ", ".join(f"`{n}` {v:.0f} MB" for n, v in warm.items()) + "."]
    lines += [
        "",
        "## Overall",
        "",
        "| method | lossless | speedup | tokens/s | mean accepted | exact match | time draft / verify / other (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        o = m["overall"]
        lines.append(
            f"| `{name}` | {_lossless(m, results)} | {_fmt(o['speedup'], '.2f', '×')} | "
            f"{_fmt(o['tokens_per_s'], '.1f')} | {_fmt(o['mean_accepted'], '.2f')} | {_exact(o)} | {_split(o)} |"
        )
    for title, render in (
        ("Speedup over `ar` per category", lambda c: _fmt(c["speedup"], ".2f", "×")),
        ("Mean accepted tokens per target pass", lambda c: _fmt(c["mean_accepted"], ".2f")),
        ("Exact match with `ar`", _exact),
    ):
        lines += ["", f"## {title}", "", "| method | " + " | ".join(cats) + " | overall |",
                  "|---|" + "---|" * (len(cats) + 1)]
        for name, m in methods.items():
            cells = [render(m["categories"][c]) for c in cats] + [render(m["overall"])]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += _sources_tables(methods, cats)
    lines += _how_computed()
    return "\n".join(lines) + "\n"


def _how_computed() -> list[str]:
    """report.md's closing section: the plots, and how every number is computed."""
    return [
        "",
        "Plots: `speedup.png` (speedup per category, grouped by method), `accepted_hist.png` (how many draft "
        "tokens each target pass accepted).",
        "",
        "## How the numbers are computed",
        "",
        "- **tokens/s** of a prompt: new tokens over all its turns (the prompt excluded, a final EOS token "
        "included) / wall-clock seconds of the decode calls (prefill included, prompt tokenization excluded), "
        "the median over repeats. A category's (or the overall) tokens/s is the mean over its prompts.",
        "- **speedup** = the method's tokens/s / `ar`'s tokens/s over the same prompts: a ratio of means, not a "
        "mean of per-prompt ratios. `results.json` also has `speedup_total`: (total tokens / total seconds) of "
        "the method over the same for `ar`.",
        "- **mean accepted** = new tokens / target forward passes that emitted tokens, the bonus token included, "
        "so `ar` scores exactly 1.00. For the `hf-*` peers the passes are counted with a forward hook on the "
        "target model (the draft model's passes in `hf-assisted` are not counted); where passes cannot be "
        "counted the table says n/a.",
        "- **exact match**: the fraction of prompts whose token ids, every turn and every repeat, equal `ar`'s "
        "(lengths included); n/a under sampling, where outputs are random by design.",
        "- **time split**: draft = proposing and observing, verify = the target's forward pass over the draft, "
        "acceptance and the cache commit, other = prefill, detokenizing and the loop itself, as a share of wall "
        "time. transformers' peers do not expose it (n/a).",
        "- Runs are interleaved per prompt (`ar`, then each method in turn) after one warm-up generation per "
        "method, so machine drift hits every method alike. Multi-turn prompts are answered turn by turn, each "
        "method's own earlier answers feeding the next turn.",
        f"- Peer baselines run transformers' `generate` on the same model, tokenizer and prompt ids: `hf-pld` "
        f"with `prompt_lookup_num_tokens={HF_PLD_TOKENS}` and `max_matching_ngram_size={HF_PLD_NGRAM}` (as our "
        f"`pld`), `hf-assisted` with transformers' default assisted-generation settings read from the draft "
        f"model's `generation_config`; they keep transformers' own SDPA attention (the engine may load the "
        f"model with its row-exact attention, see `quickdraft/attention.py`).",
    ]


def _sources_tables(methods: dict[str, Any], cats: list[str]) -> list[str]:
    """For methods that choose among drafters (``auto``): how often each was chosen, and its acceptance."""
    lines: list[str] = []
    for name, m in methods.items():
        names = list((m["overall"].get("sources") or {}))
        if not names:
            continue
        lines += ["", f"## Draft sources chosen by `{name}`", "",
                  "Share of target passes whose draft had nodes from the source (`plain`: no draft), and in "
                  "brackets the share of its verified nodes that were accepted.", "",
                  "| source | " + " | ".join(cats) + " | overall |", "|---|" + "---|" * (len(cats) + 1)]
        for source in names:
            cells = [_source_cell(m["categories"][c], source) for c in cats] + [_source_cell(m["overall"], source)]
            lines.append(f"| `{source}` | " + " | ".join(cells) + " |")
    return lines


def _source_cell(cell: dict[str, Any], source: str) -> str:
    row = (cell.get("sources") or {}).get(source)
    if not row or not cell.get("steps"):
        return "n/a"
    text = f"{100 * row['chosen'] / cell['steps']:.0f}%"
    return text + (f" ({100 * row['accepted'] / row['nodes']:.0f}%)" if row.get("nodes") else "")


def _figure(width: float, height: float):
    # The object-oriented API renders with Agg without pyplot or a global backend switch.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_speedup(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per category (and overall), one bar per method."""
    methods = [m for m in results["methods"] if m != BASELINE]
    groups = [*results["categories"], "overall"]
    fig = _figure(min(14.0, max(6.0, len(groups) * (0.8 + 0.11 * len(methods)))), 4.5 + 0.25 * (len(methods) // 6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"].colors  # one distinct colour per method
    for i, name in enumerate(methods):
        m = results["methods"][name]
        values = [(m["categories"][g] if g != "overall" else m["overall"])["speedup"] or 0.0 for g in groups]
        ax.bar([x + (i - (len(methods) - 1) / 2) * width for x in range(len(groups))], values, width, label=name,
               color=palette[i % len(palette)])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="ar (1.0)")
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel("speedup over ar (×)")
    ax.set_title(f"{results['model']} ({results['dtype']}), {results['suite']} suite")
    fig.legend(loc="outside lower center", fontsize="small", ncols=min(6, len(methods) + 1))
    _save_atomic(fig, path)


def plot_accepted(results: dict[str, Any], path: Path) -> None:
    """Accepted draft tokens per target pass: one histogram per method that drafts (share of passes)."""
    shown = [(n, m["overall"]) for n, m in results["methods"].items()
             if m["overall"].get("accepted_hist") and set(m["overall"]["accepted_hist"]) != {"0"}]
    cols = min(3, max(1, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig = _figure(4.0 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (name, overall) in zip(axes.flat, shown):
        hist = overall["accepted_hist"]
        ax.set_visible(True)
        total = sum(hist.values())
        keys = sorted(int(k) for k in hist)
        ax.bar(keys, [hist[str(k)] / total for k in keys])
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{name} (mean accepted {_fmt(overall['mean_accepted'], '.2f')})", fontsize="medium")
        ax.set_xlabel("accepted draft tokens per pass")
        ax.set_ylabel("share of passes")
    if not shown:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no method drafted", ha="center", va="center")
        axes[0, 0].set_axis_off()
    _save_atomic(fig, path)


def _save_atomic(fig, path: Path) -> None:
    """Write a plot whole or not at all (a reader never sees half a PNG)."""
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------ terminal


def summary_table(results: dict[str, Any]):
    """A rich Table that fits one screen: overall figures and per-category speedup."""
    from rich.table import Table

    cats = results["categories"]
    table = Table(title=f"{results['model']} · {results['suite']} · {results['dtype']} · speedup vs ar"
                  + ("" if results.get("exact", True) else " · exactness NOT guaranteed here"),
                  title_style="bold")
    for col in ("method", "speedup", "tok/s", "accepted", "exact"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for cat in cats:
        table.add_column(cat[:12], justify="right")
    for name, m in results["methods"].items():
        o = m["overall"]
        table.add_row(
            name, _fmt(o["speedup"], ".2f", "×"), _fmt(o["tokens_per_s"], ".1f"), _fmt(o["mean_accepted"], ".2f"),
            _exact(o), *[_fmt(m["categories"][c]["speedup"], ".2f") for c in cats],
        )
    return table


class RichProgress:
    """A progress bar with ETA for the runner (rich, on the given console; stderr in the CLI)."""

    def __init__(self, console) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(
            TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        )
        self._task = None

    def start(self, total: int, done: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task("loading", total=total, completed=done)

    def update(self, label: str) -> None:
        self._bar.update(self._task, description=label[:36])

    def advance(self) -> None:
        self._bar.advance(self._task)

    def stop(self) -> None:
        self._bar.stop()


__all__ = ["RichProgress", "RunInfo", "SPEEDUP_DEFINITION", "aggregate", "markdown", "plot_accepted",
           "plot_speedup", "summary_table", "write_all"]
