"""`quickdraft serve`: option errors exit with code 2; a real process serves and stops on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from click.testing import CliRunner

from quickdraft.cli import main


@pytest.mark.parametrize("args, message", [
    (["--method", "bogus"], "unknown method 'bogus'"),
    (["--max-concurrency", "0"], "--max-concurrency must be positive"),
    (["--max-queue", "-1"], "max_queue must be >= 0"),
    (["--max-prompt-tokens", "0"], "max_prompt_tokens must be positive"),
    (["--max-tokens-limit", "0"], "max_tokens_limit must be positive"),
    (["--option", "novalue"], "--option expects key=value"),
    (["--api-key", " "], "the API key is empty"),
])
def test_bad_options_are_one_line_and_exit_code_2(tiny_dir, args, message):
    out = CliRunner().invoke(main, ["serve", "--model", str(tiny_dir), *args])
    assert out.exit_code == 2, out.output
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_with_api_key_from_the_environment(tiny_dir):
    port = _free_port()
    env = {**os.environ, "QUICKDRAFT_API_KEY": "env-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quickdraft.cli", "serve", "--model", str(tiny_dir), "--dtype", "float32",
         "--port", str(port), "--max-concurrency", "2", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "hi"}).status_code == 401
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="env-key", max_retries=0, timeout=60)
        reply = api.completions.create(model=tiny_dir.name, prompt="hi there", max_tokens=3, temperature=0)
        assert reply.usage.completion_tokens <= 3 and reply.quickdraft["method"] == httpx.get(
            f"{url}/health").json()["default_method"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output
    assert f"serving {tiny_dir.name}" in output
