"""The OpenAI wire format: request models (pydantic), errors, responses and stream chunks.

Requests are validated strictly: a field we do not know gets a 400 naming it
(``extra="forbid"``), and a known OpenAI field we cannot honour (``n`` > 1,
penalties, logprobs) is accepted only at its neutral value, never ignored.

    >>> try:
    ...     parse_request(ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}], "tools": []})
    ... except ApiError as exc:
    ...     print(exc.status, exc.param, exc.message)
    400 tools unsupported field 'tools'
    >>> r = parse_request(CompletionRequest, {"prompt": ["Once upon"], "max_tokens": 8})
    >>> r.prompt, r.max_tokens, r.temperature
    ('Once upon', 8, None)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from ..engine import GenerationResult
from ..text import MAX_STOP_CHARS

MAX_STOP_STRINGS = 16


class ApiError(Exception):
    """An error response in the OpenAI format: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- requests


def _text_content(value: Any) -> str:
    """A message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of text parts")
    texts = []
    for i, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"part {i} has type {kind!r}; only text parts are supported")
        if set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise ValueError(f"part {i} must be exactly {{\"type\": \"text\", \"text\": <string>}}")
        texts.append(part["text"])
    return "\n".join(texts)


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ValueError("must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
    return stops


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise ValueError("must be a string (or a list of one string); token-id prompts and batches are not supported")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Any, AfterValidator(_text_content)]


class GenerationFields(_Strict):
    """Fields shared by both endpoints."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None  # None: 1.0, as in OpenAI's API
    top_p: float | None = None
    seed: int | None = None
    stop: Annotated[Any, AfterValidator(_stop)] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    top_k: int | None = None  # an extension (as in vLLM and llama.cpp); None or 0: off
    method: str | None = None  # an extension: quickdraft's decoding method (GET /health lists them)
    max_draft: int | None = None  # an extension: at most this many draft tokens per step; 0: speculation off
    user: str | None = None  # an end-user id for abuse tracking; it does not change the output
    # Accepted only at their neutral value (clients often send the defaults explicitly).
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    NEUTRAL: ClassVar[dict[str, Any]] = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}}


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    NEUTRAL: ClassVar[dict[str, Any]] = {**GenerationFields.NEUTRAL, "logprobs": False, "top_logprobs": 0}

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages for the chat template (``developer`` is OpenAI's newer name for ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in self.messages]


class CompletionRequest(GenerationFields):
    prompt: Annotated[Any, AfterValidator(_prompt)]
    echo: bool | None = None
    best_of: int | None = None

    NEUTRAL: ClassVar[dict[str, Any]] = {**GenerationFields.NEUTRAL, "echo": False, "best_of": 1}


def parse_request(model: type[GenerationFields], data: Any) -> GenerationFields:
    """Validate a decoded JSON body; raises ApiError(400) naming the offending field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        request = model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    for name, neutral in model.NEUTRAL.items():
        value = getattr(request, name)
        if value is not None and value != neutral:
            raise ApiError(400, f"'{name}' = {value!r} is not supported (only {neutral!r})", param=name)
    return request


def _validation_error(exc: ValidationError) -> ApiError:
    error = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return ApiError(400, f"unsupported field '{param}'", param=param)
    if error["type"] == "missing":
        return ApiError(400, f"missing field '{param}'", param=param)
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    return ApiError(400, f"invalid '{param}': {message}", param=param)


def decode_body(raw: bytes) -> Any:
    """JSON from request bytes; raises ApiError(400) for invalid UTF-8 or malformed JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (bad byte at offset {exc.start})") from None
    too_deep = ApiError(400, f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:  # the parser recurses once per level
        raise too_deep from None
    if _nesting(data) > MAX_JSON_DEPTH:
        raise too_deep
    try:  # JSON escapes can smuggle in lone surrogates, which no tokenizer can encode
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the request contains an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)") from None
    return data


MAX_JSON_DEPTH = 64  # an OpenAI request nests 5 levels at most (messages -> content parts -> part)


def _nesting(data: Any) -> int:
    """How deeply lists and objects nest in decoded JSON (iteratively: no recursion to exhaust).

    >>> _nesting({"a": [1, {"b": "[[["}]})
    3
    """
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


# --------------------------------------------------------------- responses


def usage(result: GenerationResult) -> dict[str, Any]:
    """OpenAI's token counts, plus the request's speculation in vLLM's terms: mean accepted tokens per step
    (the bonus token counted: 1.0 for plain decoding) and the share of draft tokens accepted."""
    s = result.stats
    prompt, completion = s.prompt_tokens, len(result.token_ids)
    accepted = max(s.new_tokens - s.steps, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "mean_accepted_tokens": round(s.mean_accepted, 4),
            "draft_acceptance_rate": round(accepted / s.drafted_tokens, 4) if s.drafted_tokens else 0.0}


def quickdraft_stats(result: GenerationResult) -> dict[str, Any]:
    """quickdraft's own numbers, in an extra ``quickdraft`` field of the response."""
    s = result.stats
    return {"method": result.method, "steps": s.steps, "drafted_tokens": s.drafted_tokens,
            "mean_accepted": round(s.mean_accepted, 4), "tokens_per_s": round(s.tokens_per_s, 3)}


@dataclass
class Reply:
    """The response shapes of one endpoint (``chat`` or ``completions``) for one request."""

    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex

    def _envelope(self, *, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion" + (".chunk" if chunk else "")) if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish_reason: str | None, *, chunk: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        if chunk:
            return {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None,
                    "finish_reason": finish_reason}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

    def response(self, result: GenerationResult) -> dict[str, Any]:
        """The non-streaming response."""
        choice = self._choice(result.text, result.finish_reason, chunk=False)
        return {**self._envelope(chunk=False), "choices": [choice], "usage": usage(result),
                "quickdraft": quickdraft_stats(result)}

    def opening_chunk(self) -> dict[str, Any] | None:
        """Chat streams start with the assistant's role; completion streams have no opening chunk."""
        if not self.chat:
            return None
        chunk = {**self._envelope(chunk=True), "choices": [self._choice("", None, chunk=True)]}
        chunk["choices"][0]["delta"]["role"] = "assistant"
        return chunk

    def text_chunk(self, piece: str) -> dict[str, Any]:
        return {**self._envelope(chunk=True), "choices": [self._choice(piece, None, chunk=True)]}

    def closing_chunks(self, result: GenerationResult, *, include_usage: bool) -> list[dict[str, Any]]:
        """The chunk with the finish reason (carrying usage, so every stream reports it), then, when asked
        with ``stream_options.include_usage``, OpenAI's usage-only chunk with empty choices."""
        final = {**self._envelope(chunk=True), "choices": [self._choice(None, result.finish_reason, chunk=True)],
                 "usage": usage(result), "quickdraft": quickdraft_stats(result)}
        if not include_usage:
            return [final]
        return [final, {**self._envelope(chunk=True), "choices": [], "usage": usage(result)}]


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"
