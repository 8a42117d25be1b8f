"""A bounded loopback probe of a running ``quickdraft serve``: hostile and clumsy requests, then 16 streams.

    python -m quickdraft.server.probe --url http://127.0.0.1:8000 [--api-key KEY]

Each check prints ``ok`` or ``FAIL`` with what it saw; the exit status is the
number of failures (0: all passed). It sends a bounded number of requests (about
60, plus 16 concurrent streams of at most 32 tokens each and 50 half-open
connections) and gives up on any one after 120 seconds. It needs the server's
default offered methods (its default method and ``ar``).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import httpx

CHAT = "/v1/chat/completions"


class Probe:
    def __init__(self, url: str, api_key: str | None, *, health_ms: float = 100.0) -> None:
        self.url = url.rstrip("/")
        self.health_ms = health_ms
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.failures = 0

    def check(self, name: str, ok: bool, seen: str = "") -> None:
        self.failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {name}" + (f"  ({seen})" if seen and not ok else ""), flush=True)

    def post(self, body: bytes | dict, path: str = CHAT, headers: dict | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url + path, content=content, headers={**self.headers, **(headers or {})}, timeout=120)

    def status(self, name: str, response: httpx.Response, want: int) -> None:
        self.check(f"{name} -> {want}", response.status_code == want, f"{response.status_code}: {response.text[:160]}")

    # ------------------------------------------------------------- checks

    def bad_requests(self) -> None:
        hi = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        self.status("malformed JSON", self.post(b'{"messages": [', ), 400)
        self.status("JSON nested 50,000 deep", self.post(b'{"messages": ' + b"[" * 50000 + b"]" * 50000 + b"}"), 400)
        self.status("seed 2**64", self.post({**hi, "seed": 2 ** 64}), 400)
        self.status("temperature 1e-40", self.post({**hi, "temperature": 1e-40}), 400)
        self.status("unknown method", self.post({**hi, "method": "nope"}), 400)
        self.status("a method the server does not offer", self.post({**hi, "method": "pld-tree+recycle+ngram"}), 400)
        self.status("text/plain body", self.post(hi, headers={"content-type": "text/plain"}), 415)
        self.status("foreign Host header", self.post(hi, headers={"host": "rebinding.example"}), 400)
        self.status("unsupported field", self.post({**hi, "tools": []}), 400)
        for path in ("/docs", "/openapi.json"):
            r = httpx.get(self.url + path, timeout=60)
            self.check(f"{path} without the key is not served", r.status_code in (401, 404), str(r.status_code))
        if "authorization" in self.headers:
            r = httpx.post(self.url + CHAT, json=hi, timeout=60)
            self.status("no API key", r, 401)
        leaked = [r.text for r in (self.post({**hi, "seed": 2 ** 64}),) if "Traceback" in r.text or "Error:" in r.text]
        self.check("error bodies carry no exception text", not leaked, leaked[0][:120] if leaked else "")

    def huge_prompt(self) -> None:
        big = json.dumps({"messages": [{"role": "user", "content": "word " * 800_000}]}).encode()  # ~4 MB
        result: dict = {}
        sender = threading.Thread(target=lambda: result.update(r=self.post(big)))
        sender.start()
        slowest = 0.0
        while sender.is_alive():
            start = time.perf_counter()
            httpx.get(self.url + "/health", timeout=60)
            slowest = max(slowest, time.perf_counter() - start)
        sender.join()
        self.check("a 4 MB prompt is refused with a 4xx", 400 <= result["r"].status_code < 500, str(result["r"].status_code))
        self.check(f"/health answers within {self.health_ms:g} ms meanwhile", slowest * 1000 < self.health_ms,
                   f"{slowest * 1000:.0f} ms")

    def half_open(self, count: int = 50) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        socks = []
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(sock)
        r = httpx.get(self.url + "/health", timeout=60)
        self.status(f"/health beside {count} half-open connections", r, 200)
        for sock in socks:
            sock.close()

    def streams(self, count: int = 16) -> None:
        prompts = [f"Write one short sentence about the number {i}." for i in range(count)]

        def reference(prompt: str) -> str:
            r = self.post({"messages": [{"role": "user", "content": prompt}], "max_tokens": 32, "temperature": 0,
                           "method": "ar"})
            return r.json()["choices"][0]["message"]["content"]

        def stream(prompt: str) -> str:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 32, "temperature": 0,
                    "stream": True}
            text = []
            with httpx.stream("POST", self.url + CHAT, content=json.dumps(body), headers=self.headers,
                              timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        text += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
            return "".join(text)

        with ThreadPoolExecutor(max_workers=count) as pool:
            got = list(pool.map(stream, prompts))
        want = [reference(p) for p in prompts]
        same = sum(a == b for a, b in zip(got, want))
        self.check(f"{count} concurrent streams, each equal to plain decoding", same == count, f"{same}/{count} equal")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--health-ms", type=float, default=100.0, help="the slowest /health allowed meanwhile")
    args = parser.parse_args(argv)
    probe = Probe(args.url, args.api_key, health_ms=args.health_ms)
    steps: list[Callable[[], None]] = [probe.bad_requests, probe.huge_prompt, probe.half_open, probe.streams]
    for step in steps:
        step()
    print(f"{probe.failures} failure(s)")
    return min(probe.failures, 100)


if __name__ == "__main__":
    sys.exit(main())
