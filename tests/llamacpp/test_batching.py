"""Continuous batching on the llama.cpp backend (the embedded GGUF): every request's output in a batch
equals its output alone, token for token, for every method that runs there, with requests joining and
leaving mid-way, EOS and stop strings inside drafts, a cancelled request, seeded sampling and per-request
speculation control; the batch's rows are checked against solo decoding on this machine."""

from __future__ import annotations

import numpy as np
import pytest

from quickdraft import methods
from tests.integration.test_real_model import PROMPTS

pytest.importorskip("llama_cpp", reason="the llama.cpp backend is not installed here")

pytestmark = pytest.mark.real
NEW_TOKENS = 32
BATCH_PROMPTS = PROMPTS + ["Say only the word yes.", "Repeat exactly: red green blue, red green blue, red green"]
LLAMA_METHODS = [m.name for m in methods() if m.name not in ("ar", "draft-tree")
                 and m.runs_on({"logits"})]


@pytest.fixture(scope="module")
def engine():
    from quickdraft import load

    return load("smollm2-135m-instruct", backend="llamacpp")


@pytest.fixture(scope="module")
def batch(engine):
    from quickdraft.batching import BatchDecoder

    decoder = BatchDecoder(engine, 3, policy="always")  # 5 requests on 3 slots: two join as others leave
    assert decoder.check.exact, f"batched rows differ from solo decoding here: {decoder.check}"
    return decoder


@pytest.fixture(scope="module")
def options(engine, tmp_path_factory) -> dict:
    from tests.conftest import make_datastore

    folder = tmp_path_factory.mktemp("batch-options")
    return {"rest": {"datastore": str(make_datastore(engine, PROMPTS, folder / "rest"))},
            "draft": {"draft_model": "smollm2-135m-instruct", "cost": 0.3}}


def _requests(engine, method: str, **kwargs):
    # different lengths, so requests leave at different steps and the waiting ones join mid-way
    lengths = [NEW_TOKENS, 9, NEW_TOKENS, 48, 20]
    return [engine.prepare(p, method=method, max_new_tokens=n, **kwargs) for p, n in zip(BATCH_PROMPTS, lengths)]


@pytest.mark.parametrize("method", ["ar"] + LLAMA_METHODS + ["pld+recycle"])
def test_batched_output_equals_solo_output(engine, batch, options, method):
    requests = _requests(engine, method)
    solo = [list(engine.run(r, options=options.get(method)))[-1] for r in requests]
    got = batch.run(requests, options=options.get(method))
    for alone, batched in zip(solo, got):
        assert batched.token_ids == alone.token_ids, f"{method}: {batched.text!r} != {alone.text!r}"
        assert batched.text == alone.text and batched.finish_reason == alone.finish_reason
        assert batched.exact
    assert not batch.lanes and batch.free() == 3
    if method != "ar":
        assert sum(r.stats.drafted_tokens for r in got) > 0
        assert sum(r.stats.new_tokens - r.stats.steps for r in got) > 0, f"{method}: no draft accepted in the batch"


def test_goodput_policy_equals_solo_and_eos_and_stops_inside_drafts(engine):
    from quickdraft.batching import BatchDecoder

    decoder = BatchDecoder(engine, 4)
    requests = _requests(engine, "recycle") + [engine.prepare(BATCH_PROMPTS[4], method="pld", max_new_tokens=40,
                                                              stop=["blue, red"])]
    solo = [list(engine.run(r))[-1] for r in requests]
    assert solo[3].finish_reason == "stop" and solo[-1].finish_reason == "stop"
    for _ in range(2):  # the second time recycle drafts the answers it saw: EOS lies inside drafts
        got = decoder.run(requests)
        # past a stop string, the rest of its step's tokens stay in the ids (which ones depends on the drafts)
        assert [r.token_ids for r in got[:-1]] == [r.token_ids for r in solo[:-1]]
        assert [r.text for r in got] == [r.text for r in solo]
        assert [r.finish_reason for r in got] == [r.finish_reason for r in solo]
    assert decoder.stats.passes > 0 and decoder.stats.rows >= decoder.stats.lanes


def test_a_cancelled_request_leaves_the_others_unchanged(engine, batch):
    requests = _requests(engine, "pld")[:3]
    solo = [list(engine.run(r))[-1] for r in requests]
    lanes = [batch.join(r) for r in requests]
    results = {}
    for step in range(60):
        if step == 4:
            batch.leave(lanes[1])  # the client went away
        for lane, items in batch.step().items():
            results.update({lane: item for item in items if not isinstance(item, str)})
        if not batch.lanes:
            break
    assert lanes[1] not in results and batch.free() == 3
    assert results[lanes[0]].token_ids == solo[0].token_ids
    assert results[lanes[2]].token_ids == solo[2].token_ids


def test_seeded_sampling_batched_equals_alone(engine, batch):
    requests = [engine.prepare(p, method=m, max_new_tokens=NEW_TOKENS, temperature=0.7, seed=11)
                for p, m in zip(BATCH_PROMPTS, ("pld", "ngram", "ar", "pld", "recycle"))]
    solo = [list(engine.run(r))[-1] for r in requests]
    got = batch.run(requests)
    assert [r.token_ids for r in got] == [r.token_ids for r in solo]


def test_disabled_speculation_gives_plain_steps(engine, batch):
    request = engine.prepare(BATCH_PROMPTS[4], method="pld", max_new_tokens=24, max_draft=0)
    lane = batch.join(request)
    result = None
    while batch.lanes:
        for _, items in batch.step().items():
            result = next((i for i in items if not isinstance(i, str)), result)
    assert result.stats.drafted_tokens == 0 and result.stats.steps == result.stats.new_tokens
    alone = list(engine.run(request))[-1]
    assert alone.stats.drafted_tokens == 0 and alone.token_ids == result.token_ids
    assert lane not in batch.lanes


def test_the_batch_check_can_fail(batch):
    """Negative control: a batched pass whose rows are not solo decoding's is caught."""
    from quickdraft.backends.llamacpp_batch import check_batch

    class Skewed:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def forward(self, rows):
            out = self.inner.forward(rows)
            if len(rows) > 1:
                out[-1] = out[-1].copy()
                out[-1][0, 0] = np.nextafter(out[-1][0, 0], np.inf)
            return out

    assert not check_batch(Skewed(batch.slots)).exact
    assert check_batch(batch.slots).exact


def test_server_batches_concurrent_requests_with_solo_answers(engine):
    """Six concurrent streaming clients on a server batching four at a time: every answer is the request's
    solo answer, usage reports its acceptance, a request can turn speculation off, /metrics shows the batch,
    and a client that leaves mid-stream does not disturb the others."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import openai

    from quickdraft.server import ServerConfig
    from tests.server.conftest import metric, serving

    config = ServerConfig(default_method="pld", methods=("pld", "ngram", "ar"), max_batch=4)
    asks = [(p, m) for p, m in zip(BATCH_PROMPTS + BATCH_PROMPTS[:1], ("pld", "ngram", "ar", "pld", "pld", "ngram"))]
    solo = [engine.generate(p, method=m, max_new_tokens=NEW_TOKENS) for p, m in asks]
    with serving([engine], config) as url:
        assert httpx.get(f"{url}/health").json()["max_batch"] == 4
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)

        def ask(item):
            prompt, method = item
            stream = api.chat.completions.create(
                model="smollm2-135m-instruct", max_tokens=NEW_TOKENS, temperature=0, stream=True,
                messages=[{"role": "user", "content": prompt}], extra_body={"method": method},
                stream_options={"include_usage": True})
            text, usage = "", None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                usage = chunk.usage or usage
            return text, usage

        def leave_early():
            with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "Count to fifty:", "max_tokens": 200,
                                                                   "stream": True}, timeout=60) as reply:
                next(reply.iter_lines())

        with ThreadPoolExecutor(len(asks) + 1) as pool:
            gone = pool.submit(leave_early)
            answers = list(pool.map(ask, asks))
            gone.result()
        for (text, usage), alone in zip(answers, solo):
            assert text == alone.text
            assert usage.completion_tokens == len(alone.token_ids)
            assert usage.model_extra["mean_accepted_tokens"] >= 1.0
        off = api.chat.completions.create(model="smollm2-135m-instruct", max_tokens=NEW_TOKENS, temperature=0,
                                          messages=[{"role": "user", "content": asks[4][0]}],
                                          extra_body={"method": "pld", "max_draft": 0})
        assert off.choices[0].message.content == solo[4].text
        assert off.usage.model_extra["draft_acceptance_rate"] == 0.0
        assert off.model_extra["quickdraft"]["drafted_tokens"] == 0
        bad = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_draft": -1})
        assert bad.status_code == 400 and "max_draft" in bad.text
        assert metric(url, "quickdraft_batch_passes_total") > 0
        assert metric(url, "quickdraft_batch_size") > 1.0
        assert metric(url, "quickdraft_generations_total", method="pld", finish_reason="cancelled") + \
            metric(url, "quickdraft_generations_total", method="pld", finish_reason="length") >= 1


def test_a_one_token_prompt_joins_at_once(engine, batch):
    requests = [engine.prepare("Hello", chat=False, method="recycle", max_new_tokens=12),
                engine.prepare(BATCH_PROMPTS[1], method="recycle", max_new_tokens=12)]
    assert len(requests[0].prompt_ids) == 1
    solo = [list(engine.run(r))[-1] for r in requests]
    assert [r.token_ids for r in batch.run(requests)] == [r.token_ids for r in solo]
