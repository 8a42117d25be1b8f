"""Plain llama-cpp-python as a user gets it: Llama(model_path), create_chat_completion, greedy, 128 tokens.
Usage: peer.py GGUF OUT.json [threads]   (first turn of the first 3 prompts per category of builtin.jsonl)"""
import json, sys, time, collections
from llama_cpp import Llama
gguf, out = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else None
prompts, taken = [], collections.Counter()
for line in open("quickdraft/bench/data/builtin.jsonl"):
    p = json.loads(line)
    if taken[p["category"]] < 3:
        taken[p["category"]] += 1
        prompts.append(p)
kw = {} if threads is None else {"n_threads": threads, "n_threads_batch": threads}
llm = Llama(model_path=gguf, n_ctx=4096, verbose=False, **kw)
llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0)  # warm-up
rows = []
for p in prompts:
    t = time.perf_counter()
    r = llm.create_chat_completion([{"role": "user", "content": p["turns"][0]}], max_tokens=128, temperature=0.0)
    wall = time.perf_counter() - t
    rows.append({"id": p["question_id"], "category": p["category"], "tokens": r["usage"]["completion_tokens"], "wall": wall})
json.dump({"threads": llm.n_threads if hasattr(llm, "n_threads") else threads, "rows": rows}, open(out, "w"))
tot = sum(r["tokens"] for r in rows); w = sum(r["wall"] for r in rows)
print(f"{len(rows)} prompts, {tot} tokens, {tot / w:.1f} tok/s (sum tokens / sum wall)")
