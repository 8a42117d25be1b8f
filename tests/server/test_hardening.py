"""The server under hostile and clumsy use: each test fails without its fix (issue: reliability)."""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time

import httpx
import pytest

from quickdraft.engine import Engine
from quickdraft.server import ServerConfig
from tests.server.conftest import serving

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


def _chat(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}).encode()


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_client_chosen_methods_leave_memory_and_labels_bounded(tiny_target):
    """200 requests naming distinct combinations: only the offered methods are built, in canonical spelling."""
    engine = Engine(tiny_target)
    offered = ("pld", "ar", "recycle+pld")
    parts = ["pld", "recycle", "ngram", "lookahead", "pld-tree", "rest", "ar"]
    names = ["+".join(p) for r in (2, 3) for p in itertools.permutations(parts[:6], r)][:199] + ["pld+recycle"]
    with serving([engine], ServerConfig(default_method="pld", methods=offered)) as url:
        before = _rss_mb()
        statuses = {}
        for name in names:
            r = httpx.post(f"{url}{CHAT}", content=_chat(method=name, temperature=0), headers=JSON, timeout=60)
            statuses[name] = r.status_code
            if r.status_code == 400:
                assert "not offered" in r.json()["error"]["message"] or "unknown" in r.json()["error"]["message"]
        grown = _rss_mb() - before
        metrics = httpx.get(f"{url}/metrics").text
    assert statuses["pld+recycle"] == statuses["recycle+pld"] == 200  # one method, two spellings
    assert sum(s == 200 for s in statuses.values()) == 2 and set(statuses.values()) == {200, 400}
    assert len(engine._drafters) <= len(offered)
    assert {key[0] for key in engine._drafters} <= {"pld", "ar", "pld+recycle"}
    labels = {line.split('method="')[1].split('"')[0] for line in metrics.splitlines() if 'method="' in line}
    assert labels <= {"", "pld", "ar", "pld+recycle"}
    assert grown < 100, f"the server grew by {grown:.0f} MB"


def test_the_engine_keeps_a_bounded_number_of_drafters(tiny_target):
    engine = Engine(tiny_target, max_drafters=3)
    for k in range(2, 9):
        engine.drafter("pld", {"k": k})
    assert len(engine._drafters) == 3 and [key[1] for key in engine._drafters][-1] == (("k", "8"),)


def test_an_offered_list_without_the_default_is_refused():
    from quickdraft.errors import QuickdraftError

    with pytest.raises(QuickdraftError, match="not among the offered"):
        ServerConfig(default_method="pld", methods=("ar",))
    assert ServerConfig(default_method="recycle+pld", methods=("pld+recycle", "ar")).default_method == "pld+recycle"


def test_a_huge_prompt_is_refused_before_tokenizing_and_health_stays_quick(tiny_target, monkeypatch):
    engine = Engine(tiny_target)
    tokenized = []
    original = engine.prepare
    monkeypatch.setattr(engine, "prepare", lambda *a, **k: tokenized.append(1) or original(*a, **k))
    config = ServerConfig(default_method="pld", max_body_bytes=8 << 20, max_prompt_tokens=100)
    with serving([engine], config) as url:
        big = json.dumps({"messages": [{"role": "user", "content": "word " * (4 << 18)}]}).encode()  # ~5 MB
        done = {}
        sender = threading.Thread(target=lambda: done.update(
            r=httpx.post(f"{url}{CHAT}", content=big, headers=JSON, timeout=120)))
        sender.start()
        slowest = 0.0
        while sender.is_alive():
            start = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
            slowest = max(slowest, time.perf_counter() - start)
        sender.join()
    assert done["r"].status_code == 400 and "characters" in done["r"].json()["error"]["message"]
    assert not tokenized  # refused on its length alone
    assert slowest < 1.0, f"/health took {slowest:.3f} s while the prompt was refused"  # seconds before the fix


def test_half_open_connections_are_dropped_and_the_server_keeps_serving(tiny_target):
    config = ServerConfig(default_method="pld", header_timeout=1.0, max_connections=64)
    with serving([Engine(tiny_target)], config) as url:
        host, port = url.removeprefix("http://").split(":")
        idle = []
        for _ in range(200):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
            idle.append(sock)
        time.sleep(2.5)  # past the header deadline
        r = httpx.post(f"{url}/v1/completions", content=b'{"prompt": "hi", "max_tokens": 2}', headers=JSON,
                       timeout=60)
        assert r.status_code == 200, r.text
        closed = 0
        for sock in idle:
            sock.settimeout(5)
            try:
                closed += sock.recv(1) == b""
            except OSError:
                closed += 1
            sock.close()
        assert closed == 200


def test_only_json_bodies_and_known_hosts(tiny_target):
    with serving([Engine(tiny_target)], ServerConfig(default_method="pld")) as url:
        r = httpx.post(f"{url}{CHAT}", content=_chat(), headers={"content-type": "text/plain"}, timeout=60)
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        r = httpx.post(f"{url}{CHAT}", content=_chat(), timeout=60)  # no content type at all
        assert r.status_code == 415
        r = httpx.post(f"{url}{CHAT}", content=_chat(), headers={**JSON, "host": "evil.example:8000"}, timeout=60)
        assert r.status_code == 400
        assert httpx.get(f"{url}/health", headers={"host": "rebound.example"}).status_code == 400
        assert httpx.get(f"{url}/health", headers={"host": "localhost"}).status_code == 200
        assert httpx.get(f"{url}/health", headers={"host": "[::1]:8000"}).status_code == 200  # IPv6 loopback
    with serving([Engine(tiny_target)], ServerConfig(default_method="pld", allowed_hosts=("*",))) as url:
        assert httpx.get(f"{url}/health", headers={"host": "my-server.lan"}).status_code == 200


@pytest.mark.parametrize("body, fragment", [
    (_chat(seed=2 ** 64), "seed"),
    (_chat(seed=-2 ** 63 - 1), "seed"),
    (_chat(temperature=1e-40), "temperature"),
    (b'{"messages": ' + b"[" * 50000 + b"]" * 50000 + b"}", "nested"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "user": ' + b"[" * 70 + b"]" * 70 + b"}", "nested"),
])
def test_hostile_values_are_400s_not_500s(tiny_target, body, fragment):
    with serving([Engine(tiny_target)], ServerConfig(default_method="pld")) as url:
        r = httpx.post(f"{url}{CHAT}", content=body, headers=JSON, timeout=60)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_the_largest_seed_works(tiny_target):
    with serving([Engine(tiny_target)], ServerConfig(default_method="pld")) as url:
        r = httpx.post(f"{url}{CHAT}", content=_chat(seed=2 ** 64 - 1, temperature=0.7), headers=JSON, timeout=60)
    assert r.status_code == 200, r.text


def test_api_docs_are_off_unless_asked_and_then_behind_the_key(tiny_target):
    with serving([Engine(tiny_target)], ServerConfig(default_method="pld", api_key="k")) as url:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{url}{path}").status_code == 404
    with serving([Engine(tiny_target)], ServerConfig(default_method="pld", api_key="k", docs=True)) as url:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{url}{path}").status_code == 401
            assert httpx.get(f"{url}{path}", headers={"authorization": "Bearer k"}).status_code == 200
        assert "/v1/chat/completions" in httpx.get(f"{url}/openapi.json",
                                                   headers={"authorization": "Bearer k"}).json()["paths"]


def test_drafters_can_be_kept_per_user(tiny_target):
    engine = Engine(tiny_target)
    with serving([engine], ServerConfig(default_method="pld", drafter_scope="user")) as url:
        for user in ("alice", "bob", "alice", None):
            body = {"prompt": "abc abc", "max_tokens": 3, **({"user": user} if user else {})}
            assert httpx.post(f"{url}/v1/completions", content=json.dumps(body), headers=JSON,
                              timeout=60).status_code == 200
    assert sorted(str(key[2]) for key in engine._drafters) == ["None", "alice", "bob"]


def test_the_loopback_probe_runs_green(tiny_target, capsys):
    """The README's probe script (quickdraft.server.probe) against a server with an API key."""
    from quickdraft.server import probe

    config = ServerConfig(default_method="pld", api_key="k")
    with serving([Engine(tiny_target), Engine(tiny_target)], config) as url:
        # /health's latency is the probe's to judge on a quiet machine; a test run shares its 2 cores
        failures = probe.main(["--url", url, "--api-key", "k", "--health-ms", "2000"])
    out = capsys.readouterr().out
    assert failures == 0, out
    assert "16 concurrent streams" in out and "FAIL" not in out
