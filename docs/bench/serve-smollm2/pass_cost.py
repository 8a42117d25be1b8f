"""Pass cost of batched llama.cpp passes against one request's passes (the figures in docs/results.md,
Serving under load). Run from the repository root with the venv: python docs/bench/serve-smollm2/pass_cost.py"""
import time, statistics, random
from quickdraft import load
from quickdraft.backends.llamacpp_batch import LlamaSlots
from quickdraft.batching import BatchDecoder
eng = load("smollm2-135m-instruct", backend="llamacpp", threads=2)
t = eng.target
slots = LlamaSlots(t, 8)
rng = random.Random(0)
opened = [slots.open() for _ in range(8)]
for s in opened:
    slots.prefill(s, [rng.randrange(1000, 2000) for _ in range(400)])
def timed(rows):
    ts = []
    for _ in range(7):
        start = time.perf_counter(); slots.forward(rows); ts.append(time.perf_counter() - start)
        for s, toks in rows: slots.keep(s, slots.cells[s] - len(toks))
    return statistics.median(ts) * 1e3
# solo reference on the target's own (unified) context
cache = t.new_cache(); t.prefill([rng.randrange(1000, 2000) for _ in range(400)], cache)
def solo(n):
    ts = []
    for _ in range(7):
        start = time.perf_counter(); t.forward([5] * n, cache); ts.append(time.perf_counter() - start)
        cache.keep(len(cache) - n, [0]); cache.truncate(len(cache) - 1)
    return statistics.median(ts) * 1e3
one = solo(1)
print(f"solo unified: 1 row {one:.1f} ms; 2 rows {solo(2):.1f}; 4 rows {solo(4):.1f}; 8 rows {solo(8):.1f}")
for n in (1, 2, 4, 8):
    print(f"{n} requests x 1 row: {timed([(s, [5]) for s in opened[:n]]):.1f} ms;  x 2 rows: {timed([(s, [5, 6]) for s in opened[:n]]):.1f} ms; 1 row each but one with 4: {timed([(s, [5] * (4 if i == 0 else 1)) for i, s in enumerate(opened[:n])]):.1f} ms")
