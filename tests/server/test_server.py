"""The OpenAI-compatible server on the tiny random model, driven by the official `openai` client.

Each server runs in a thread on a free loopback port (see conftest.py). Expected
greedy answers come from a separately loaded engine through the Python API.
"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from quickdraft import load
from quickdraft.engine import Engine, GenerationResult
from quickdraft.server import ServerConfig
from tests.server.conftest import metric, serving, wait_for


def client(base_url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """An engine of its own (the servers' engines are separate), for the expected greedy answers."""
    return load(str(tiny_dir), dtype="float32")


@pytest.fixture(scope="module")
def server(tiny_target):
    config = ServerConfig(default_method="pld", max_queue=32, max_prompt_tokens=100, max_tokens_limit=64,
                          max_body_bytes=64 * 1024)
    with serving([Engine(tiny_target), Engine(tiny_target)], config) as url:
        yield url


# ------------------------------------------------------------------ basics


def test_health_and_models(server, tiny_target):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == tiny_target.name
    assert {"ar", "pld"} <= set(health["methods"]) and health["default_method"] == "pld"
    models = client(server).models.list()
    assert [m.id for m in models.data] == [tiny_target.name]


@pytest.mark.parametrize("method", ["ar", "pld"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_equals_the_python_api(server, reference, method, stream):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "abc abc abc"}]
    expected = reference.generate(messages, method=method, max_new_tokens=12)
    kwargs = dict(model=reference.model_name, messages=messages, max_tokens=12, temperature=0,
                  extra_body={"method": method})
    if stream:
        chunks = list(client(server).chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].quickdraft["method"] == method
    else:
        reply = client(server).chat.completions.create(**kwargs)
        text, finish, usage = reply.choices[0].message.content, [reply.choices[0].finish_reason], reply.usage
        assert reply.choices[0].message.role == "assistant" and reply.quickdraft["method"] == method
    assert text == expected.text
    assert finish == [expected.finish_reason]
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.stats.prompt_tokens, len(expected.token_ids))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_completions_equal_the_python_api(server, reference, stream):
    expected = reference.generate("the cat sat on the mat; the cat", method="pld", max_new_tokens=10, chat=False)
    kwargs = dict(model=reference.model_name, prompt="the cat sat on the mat; the cat", max_tokens=10, temperature=0)
    if stream:
        chunks = list(client(server).completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        reply = client(server).completions.create(**kwargs)
        text, usage = reply.choices[0].text, reply.usage
    assert text == expected.text
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.stats.prompt_tokens, len(expected.token_ids))


def test_stream_is_server_sent_events_ending_with_done(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    usage_only = json.loads(events[-2][len("data: "):])  # OpenAI's include_usage chunk: no choices, the usage
    assert usage_only["choices"] == [] and usage_only["usage"]["completion_tokens"] == 4


def test_stop_strings_and_seeded_sampling(server, reference):
    prompt = "x y z x y z"
    expected = reference.generate(prompt, max_new_tokens=20, temperature=0.8, seed=7, stop=["q", "z"], chat=False,
                                  method="pld")
    got = client(server).completions.create(model=reference.model_name, prompt=prompt, max_tokens=20,
                                            temperature=0.8, seed=7, stop=["q", "z"])
    assert got.choices[0].text == expected.text
    assert got.choices[0].finish_reason == expected.finish_reason


# ------------------------------------------------------------------ load


def test_32_concurrent_streams_all_correct(tiny_target, reference):
    """A fixed burst of 32 streaming requests (2 engines, 30 waiting): no failure, every answer as alone."""
    jobs = []
    for i in range(32):
        method = ("ar", "pld")[i % 2]
        prompt = f"request {i}: {'abc ' * (i % 5)}{i * 7}"
        chat = i % 4 < 2
        expected = reference.generate(prompt, method=method, max_new_tokens=6, chat=chat)
        jobs.append((prompt, method, chat, expected))
    config = ServerConfig(default_method="pld", max_queue=32)
    with serving([Engine(tiny_target), Engine(tiny_target)], config) as url:
        api = client(url)

        def run(job):
            prompt, method, chat, _ = job
            common = dict(model=tiny_target.name, max_tokens=6, temperature=0, stream=True,
                          extra_body={"method": method})
            if chat:
                chunks = list(api.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                chunks = list(api.completions.create(prompt=prompt, **common))
                text = "".join(c.choices[0].text for c in chunks if c.choices)
            return text, chunks[-1].usage.completion_tokens

        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(run, jobs))
        assert [r[0] for r in results] == [job[3].text for job in jobs]
        assert [r[1] for r in results] == [len(job[3].token_ids) for job in jobs]
        generated = sum(metric(url, "quickdraft_generated_tokens_total", method=m) for m in ("ar", "pld"))
        assert generated == sum(len(job[3].token_ids) for job in jobs)
        assert metric(url, "quickdraft_requests_total", endpoint="/v1/chat/completions", method="ar",
                      status="200") == 8
        assert metric(url, "quickdraft_queue_length") == 0 and metric(url, "quickdraft_running_generations") == 0


# ------------------------------------------------------------- bad input

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]


def _chat(**fields):
    return json.dumps({"messages": HI, **fields}).encode()


BAD_INPUT = [
    # (path, raw body, status, fragment of the message, param)
    (CHAT, b'{"messages": [', 400, "malformed JSON", None),
    (CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not valid UTF-8", None),
    (CHAT, b'[1, 2]', 400, "must be a JSON object", None),
    (CHAT, b'{"messages": "hi"}', 400, "invalid 'messages'", "messages"),
    (CHAT, b'{}', 400, "missing field 'messages'", "messages"),
    (CHAT, _chat(messages=[]), 400, "non-empty list", None),
    (CHAT, _chat(messages=[{"role": "user", "content": "  "}]), 400, "prompt is empty", None),
    (CHAT, _chat(messages=[{"role": "tool", "content": "x"}]), 400, "invalid 'messages.0.role'", "messages.0.role"),
    (CHAT, _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400,
     "only text parts", "messages.0.content"),
    (CHAT, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "unpaired", None),
    (CHAT, _chat(max_tokens="5"), 400, "invalid 'max_tokens'", "max_tokens"),
    (CHAT, _chat(max_tokens=True), 400, "invalid 'max_tokens'", "max_tokens"),
    (CHAT, _chat(max_tokens=10**12), 400, "over this server's limit of 64", "max_tokens"),
    (CHAT, _chat(max_tokens=0), 400, "positive", "max_tokens"),
    (CHAT, _chat(max_tokens=5, max_completion_tokens=6), 400, "differ", "max_tokens"),
    (CHAT, _chat(temperature=-1), 400, "temperature", None),
    (CHAT, _chat(temperature="hot"), 400, "invalid 'temperature'", "temperature"),
    (CHAT, _chat(top_p=0), 400, "top_p", None),
    (CHAT, _chat(stop=[""]), 400, "invalid 'stop'", "stop"),
    (CHAT, _chat(n=2), 400, "'n' = 2 is not supported", "n"),
    (CHAT, _chat(logprobs=True), 400, "'logprobs' = True is not supported", "logprobs"),
    (CHAT, _chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "unsupported field 'tools'", "tools"),
    (CHAT, _chat(response_format={"type": "json_object"}), 400, "unsupported field 'response_format'",
     "response_format"),
    (CHAT, _chat(method="nope"), 400, "unknown method 'nope'", "method"),
    (CHAT, _chat(model="gpt-4"), 404, "not served here", "model"),
    (CHAT, _chat(messages=[{"role": "user", "content": "word " * 40}]), 400, "at most 100", "messages"),
    (CHAT, b'{"messages": [{"role": "user", "content": "' + b"x" * 70000 + b'"}]}', 413, "larger than", None),
    (COMPLETIONS, b'{"prompt": [1, 2, 3]}', 400, "token-id prompts", "prompt"),
    (COMPLETIONS, b'{"prompt": ["a", "b"]}', 400, "batches are not supported", "prompt"),
    (COMPLETIONS, b'{"prompt": "hi", "echo": true}', 400, "'echo' = True", "echo"),
    (COMPLETIONS, b'{"prompt": "hi", "suffix": "x"}', 400, "unsupported field 'suffix'", "suffix"),
]


@pytest.mark.parametrize("path, body, status, fragment, param", BAD_INPUT,
                         ids=[f"{i}-{case[3][:24]}" for i, case in enumerate(BAD_INPUT)])
def test_bad_input_is_a_4xx_naming_the_problem(server, path, body, status, fragment, param):
    r = httpx.post(f"{server}{path}", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_the_server_keeps_serving_after_bad_input(server, reference):
    for _, body, _, _, _ in BAD_INPUT[:6]:
        httpx.post(f"{server}{CHAT}", content=body, timeout=60)
    with pytest.raises(openai.BadRequestError, match="'n' = 3 is not supported"):
        client(server).chat.completions.create(model=reference.model_name, messages=HI, n=3)
    reply = client(server).chat.completions.create(model=reference.model_name, messages=HI, max_tokens=5,
                                                   temperature=0)
    assert reply.choices[0].message.content == reference.generate(HI, method="pld", max_new_tokens=5).text
    assert httpx.get(f"{server}/v1/chat/completions").status_code == 405
    assert httpx.get(f"{server}/v1/nowhere").json()["error"]["message"] == "no such endpoint: GET /v1/nowhere"
    assert metric(server, "quickdraft_requests_total", endpoint=CHAT, method="", status="400") >= 6


# --------------------------------------------------------------- API key


def test_api_key_is_required_when_set(tiny_target):
    with serving([Engine(tiny_target)], ServerConfig(api_key="s3cret")) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        r = httpx.post(f"{url}{COMPLETIONS}", json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200  # liveness probes need no key
        good = client(url, api_key="s3cret")
        assert good.models.list().data[0].id == tiny_target.name
        reply = good.completions.create(model=tiny_target.name, prompt="hi", max_tokens=2, temperature=0)
        assert reply.usage.completion_tokens <= 2
        auth = {"Authorization": "Bearer s3cret"}
        assert metric(url, "quickdraft_requests_total", headers=auth, endpoint=COMPLETIONS, method="",
                      status="401") == 1


# ------------------------------------------- disconnects and a full queue


def _open_stream(url: str, http: httpx.Client, max_tokens: int):
    """Start a streaming completion and read until its first text chunk.

    Returns the open response and its line iterator: closing the iterator (even by dropping the
    last reference to it) would close the connection, so the caller keeps it until it disconnects.
    """
    body = {"prompt": "go on forever", "max_tokens": max_tokens, "temperature": 0, "stream": True, "method": "ar"}
    response = http.send(http.build_request("POST", f"{url}{COMPLETIONS}", json=body), stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    for line in lines:
        if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
            return response, lines
    raise AssertionError("the stream ended before its first text chunk")


def _raw_request(url: str, body: dict) -> socket.socket:
    """Send a request on a bare socket and leave it waiting (closing the socket = the client disconnects)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def test_disconnect_stops_the_generation_and_frees_the_slot(endless_target):
    with serving([Engine(endless_target)], ServerConfig(max_tokens_limit=8000, max_queue=1)) as url:
        with httpx.Client(timeout=120) as http:
            response, _lines = _open_stream(url, http, max_tokens=8000)
            assert metric(url, "quickdraft_running_generations") == 1
            response.close()  # the client goes away mid-stream
        wait_for(lambda: metric(url, "quickdraft_generations_total", method="ar", finish_reason="cancelled") == 1,
                 "the generation to be cancelled")
        wait_for(lambda: metric(url, "quickdraft_running_generations") == 0, "the slot to be free")
        assert metric(url, "quickdraft_requests_total", endpoint=COMPLETIONS, method="ar", status="499") == 1
        assert metric(url, "quickdraft_generated_tokens_total", method="ar") == 0  # it never finished

        # the same for a client waiting for a non-streaming answer
        sock = _raw_request(url, {"prompt": "go on", "max_tokens": 8000, "temperature": 0, "method": "ar"})
        wait_for(lambda: metric(url, "quickdraft_running_generations") == 1, "the generation to start")
        sock.close()
        wait_for(lambda: metric(url, "quickdraft_generations_total", method="ar", finish_reason="cancelled") == 2,
                 "the second generation to be cancelled")
        wait_for(lambda: metric(url, "quickdraft_running_generations") == 0, "the slot to be free")
        assert metric(url, "quickdraft_requests_total", endpoint=COMPLETIONS, method="ar", status="499") == 2

        reply = client(url).completions.create(model=endless_target.name, prompt="next", max_tokens=3,
                                               temperature=0, extra_body={"method": "ar"})
        assert reply.usage.completion_tokens == 3


def test_full_queue_is_429_and_a_waiting_client_that_leaves_is_dropped(endless_target):
    with serving([Engine(endless_target)], ServerConfig(max_tokens_limit=8000, max_queue=1)) as url:
        with httpx.Client(timeout=120) as http:
            running, _lines = _open_stream(url, http, max_tokens=8000)
            waiting = _raw_request(url, {"prompt": "wait", "max_tokens": 3, "temperature": 0})
            wait_for(lambda: metric(url, "quickdraft_queue_length") == 1, "the second request to wait")

            with pytest.raises(openai.RateLimitError, match="the server is busy"):
                client(url).completions.create(model=endless_target.name, prompt="third", max_tokens=3)
            r = httpx.post(f"{url}{COMPLETIONS}", json={"prompt": "fourth", "max_tokens": 3})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"

            waiting.close()  # the waiting client leaves: its place in the queue is freed at once
            wait_for(lambda: metric(url, "quickdraft_queue_length") == 0, "the queue to empty")
            assert metric(url, "quickdraft_running_generations") == 1  # the first is unaffected
            assert metric(url, "quickdraft_requests_total", endpoint=COMPLETIONS, method="pld", status="499") == 1
            running.close()
        wait_for(lambda: metric(url, "quickdraft_running_generations") == 0, "the slot to be free")
        assert metric(url, "quickdraft_generations_total", method="ar", finish_reason="cancelled") == 1
        assert metric(url, "quickdraft_requests_total", endpoint=COMPLETIONS, method="pld", status="429") == 2


# ------------------------------------------------------------ isolation


class FailingEngine(Engine):
    """An engine whose generation breaks after its first piece for prompts containing 'boom'."""

    def run(self, request, *, options=None):
        boom = "boom" in self.tokenizer.decode(list(request.prompt_ids))
        for item in super().run(request, options=options):
            yield item
            if boom and isinstance(item, str):
                raise RuntimeError("the engine broke")
        if boom:
            raise RuntimeError("the engine broke")


def test_one_request_failing_does_not_affect_others(tiny_target, reference):
    prompts = [f"prompt {i} {'boom' if i % 3 == 0 else 'fine'}" for i in range(9)]
    with serving([FailingEngine(tiny_target)], ServerConfig(max_queue=16)) as url:
        api = client(url)

        def run(i: int):
            prompt = prompts[i]
            try:
                if i % 2:
                    return "".join(c.choices[0].text for c in api.completions.create(
                        model=tiny_target.name, prompt=prompt, max_tokens=5, temperature=0, stream=True) if c.choices)
                return api.completions.create(model=tiny_target.name, prompt=prompt, max_tokens=5,
                                              temperature=0).choices[0].text
            except openai.APIError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=9) as pool:
            results = list(pool.map(run, range(9)))
        for i, result in enumerate(results):
            if "boom" in prompts[i]:
                # a clean 500 that does not echo the exception's text (internals, or another user's data)
                assert isinstance(result, openai.APIError) and "internal server error" in str(result), result
                assert "the engine broke" not in str(result) and "RuntimeError" not in str(result)
            else:
                expected: GenerationResult = reference.generate(prompts[i], method="pld", max_new_tokens=5, chat=False)
                assert result == expected.text
        assert metric(url, "quickdraft_generations_total", method="pld", finish_reason="error") == 3
        assert httpx.get(f"{url}/health").json()["running"] == 0
