"""Plain llama-cpp-python as a user runs it against quickdraft's default path, on the same prompts.

Run from the repository root:
    python userpath.py peer GGUF OUT.json [THREADS]   # Llama(model_path), create_chat_completion, greedy
    python userpath.py ours OUT.json [METHOD]          # quickdraft: load(alias).generate(prompt, method=auto)
Both answer the first turn of the first 3 prompts per category of the builtin suite with 128 new tokens
and print tokens/s as total tokens over total wall time (prompt processing included). `peer` needs only
llama-cpp-python (a venv with the default build, say), `ours` needs quickdraft.
"""
import collections
import json
import sys
import time


def prompts(per_category: int = 3) -> list[dict]:
    out, taken = [], collections.Counter()
    for line in open("quickdraft/bench/data/builtin.jsonl"):
        p = json.loads(line)
        if taken[p["category"]] < per_category:
            taken[p["category"]] += 1
            out.append(p)
    return out


def peer(gguf: str, threads: int | None):
    from llama_cpp import Llama

    kw = {} if threads is None else {"n_threads": threads, "n_threads_batch": threads}
    llm = Llama(model_path=gguf, n_ctx=4096, verbose=False, **kw)
    llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0)  # warm-up

    def answer(text: str) -> int:
        r = llm.create_chat_completion([{"role": "user", "content": text}], max_tokens=128, temperature=0.0)
        return r["usage"]["completion_tokens"]
    return f"llama-cpp-python (threads {threads or 'default'})", answer


def ours(method: str):
    from quickdraft import load

    engine = load("smollm2-135m-instruct")
    engine.generate("hi", method=method, max_new_tokens=8)  # warm-up
    return (f"quickdraft {engine.target.backend} {method}",
            lambda text: len(engine.generate(text, method=method, max_new_tokens=128).token_ids))


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "peer":
        out = args[1]
        label, answer = peer(args[0], int(args[2]) if len(args) > 2 else None)
    else:
        out = args[0]
        label, answer = ours(args[1] if len(args) > 1 else "auto")
    rows = []
    for p in prompts():
        start = time.perf_counter()
        tokens = answer(p["turns"][0])
        rows.append({"id": p["question_id"], "category": p["category"], "tokens": tokens,
                     "wall": time.perf_counter() - start})
    json.dump({"label": label, "rows": rows}, open(out, "w"))
    total, wall = sum(r["tokens"] for r in rows), sum(r["wall"] for r in rows)
    print(f"{label}: {len(rows)} prompts, {total} tokens, {total / wall:.1f} tok/s")


if __name__ == "__main__":
    main()
