"""The server on the embedded SmolLM2-135M (float32): the same text as `quickdraft generate`."""

from __future__ import annotations

import json

import openai
import pytest
from click.testing import CliRunner

from quickdraft.cli import main
from quickdraft.server import ServerConfig, default_method
from tests.server.conftest import serving

pytestmark = pytest.mark.real

PROMPT = "Rewrite with `x` renamed to `total`:\n\ndef add(a, b):\n    x = a + b\n    return x\n"
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def real_server(real_engine):
    with serving([real_engine], ServerConfig(default_method=default_method())) as url:
        yield url


@pytest.fixture(scope="module")
def cli_answers():
    """`quickdraft generate --json` with plain decoding (the reference), chat and raw completion."""
    answers = {}
    for chat in (True, False):
        args = ["generate", PROMPT, "--model", "smollm2-135m-instruct", "--dtype", "float32", "--method", "ar",
                "--max-new-tokens", str(MAX_TOKENS), "--json", *([] if chat else ["--no-chat"])]
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        answers[chat] = json.loads(out.stdout)
    return answers


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("chat", [True, False])
def test_server_text_equals_quickdraft_generate(real_server, cli_answers, real_engine, chat, stream):
    api = openai.OpenAI(base_url=f"{real_server}/v1", api_key="unused", max_retries=0, timeout=300)
    common = dict(model="smollm2-135m-instruct", max_tokens=MAX_TOKENS, temperature=0)
    if chat:
        reply = api.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], stream=stream, **common)
    else:
        reply = api.completions.create(prompt=PROMPT, stream=stream, **common)
    if stream:
        chunks = list(reply)
        text = "".join((c.choices[0].delta.content or "") if chat else c.choices[0].text for c in chunks if c.choices)
        final = chunks[-1]
    else:
        text = reply.choices[0].message.content if chat else reply.choices[0].text
        final = reply
    expected = cli_answers[chat]
    assert text == expected["text"]
    assert final.usage.completion_tokens == len(expected["token_ids"])
    assert final.usage.prompt_tokens == expected["stats"]["prompt_tokens"]
    assert final.quickdraft["method"] == default_method()
