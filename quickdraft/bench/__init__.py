"""``quickdraft bench``: suites, the interleaved measurement loop, reports and plots.

    suites.py   builtin / humaneval / JSONL prompt suites (MT-bench, Spec-Bench format)
    runner.py   backends (our methods, transformers peers), the loop, records.jsonl, resume
    report.py   aggregation into results.json, report.md, PNG plots, the terminal summary
"""

from .runner import BenchConfig, BenchSettings, prepare, run_bench
from .suites import BenchPrompt, Suite, load_suite

__all__ = ["BenchConfig", "BenchPrompt", "BenchSettings", "Suite", "load_suite", "prepare", "run_bench"]
