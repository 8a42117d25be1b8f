"""quickdraft's default path: load(alias) + Engine.generate(prompt) with method auto, 128 tokens."""
import json, sys, time, collections
from quickdraft import load
out = sys.argv[1]; method = sys.argv[2] if len(sys.argv) > 2 else "auto"
prompts, taken = [], collections.Counter()
for line in open("quickdraft/bench/data/builtin.jsonl"):
    p = json.loads(line)
    if taken[p["category"]] < 3:
        taken[p["category"]] += 1
        prompts.append(p)
e = load("smollm2-135m-instruct")
e.generate("hi", method=method, max_new_tokens=8)
rows = []
for p in prompts:
    t = time.perf_counter()
    r = e.generate(p["turns"][0], method=method, max_new_tokens=128)
    wall = time.perf_counter() - t
    rows.append({"id": p["question_id"], "category": p["category"], "tokens": len(r.token_ids), "wall": wall})
json.dump({"backend": e.target.backend, "rows": rows}, open(out, "w"))
tot = sum(r["tokens"] for r in rows); w = sum(r["wall"] for r in rows)
print(f"{e.target.backend} {method}: {len(rows)} prompts, {tot} tokens, {tot / w:.1f} tok/s (sum tokens / sum wall)")
