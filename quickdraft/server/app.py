"""The HTTP layer: an OpenAI-compatible FastAPI app over quickdraft engines.

Request path: authorize -> read and validate the body (4xx on bad input) ->
``Engine.prepare`` (tokenize, check limits) -> queue a :class:`Job` -> a
worker runs ``Engine.run`` -> pieces come back as JSON or server-sent events.
A watcher task cancels the job when the client disconnects, which drops it
from the queue or stops its generation and frees the engine.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..drafters import get_method, methods
from ..drafters.registry import canonical_method
from ..engine import Engine, GenerationResult
from ..errors import QuickdraftError
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import ApiError, ChatCompletionRequest, CompletionRequest, GenerationFields, Reply, decode_body, \
    parse_request, sse
from .scheduler import BatchScheduler, Job, Scheduler, ServerBusy

log = logging.getLogger(__name__)

CLIENT_GONE = 499  # the status we count for a client that disconnected (nginx's convention)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")  # a Host header carries IPv6 in brackets


def default_method() -> str:
    """``auto`` once such a method is registered, else prompt lookup."""
    return "auto" if any(spec.name == "auto" for spec in methods()) else "pld"


@dataclass(frozen=True)
class ServerConfig:
    """Limits and defaults of one server.

    max_queue: requests that may wait for an engine; beyond it, 429.
    max_prompt_tokens: longest prompt accepted (None: the model's context).
    max_tokens_limit: largest ``max_tokens`` a request may ask for.
    default_max_tokens: ``max_tokens`` when a request gives none.
    model_aliases: other names clients may use for the model (besides the engine's name).
    options: drafter options, ``{"": {for every method}, "pld": {"k": 8}, ...}`` (a method's own win).
    methods: the methods requests may ask for (empty: the default method and ``ar``); combinations are
        kept in canonical spelling (``recycle+pld`` is ``pld+recycle``), so every drafter the server
        builds, and every metrics label, comes from this list.
    allowed_hosts: the ``Host`` names requests may carry (``*``: any); loopback names by default, so a
        web page cannot reach a local server through DNS rebinding.
    docs: serve ``/docs``, ``/redoc`` and ``/openapi.json`` (behind the API key when one is set).
    header_timeout, body_timeout: seconds a client may take to send its request headers, and its body;
        a slower connection is closed (headers) or answered 408 (body).
    max_connections: open connections (and requests in flight) beyond which uvicorn answers 503.
    drafter_scope: ``shared``: drafters learn from every request (n-gram statistics, recycled tokens,
        auto's choices), which makes drafts better, and lets timing hint at what others wrote;
        ``user``: requests share drafters only with requests of the same ``user`` field (requests
        without one share the anonymous drafters). Neither changes any answer's text.
    max_batch: requests decoded together in one pass per step (continuous batching, on backends that
        batch: llama.cpp); 1: one request at a time per engine. Where batched rows are not exact on this
        machine, or the backend does not batch, the server says so and serves one at a time.
    speculation: how many draft tokens a batched step verifies: ``goodput`` (chosen per step to maximise
        committed tokens per second, SmartSpec), ``always`` or ``never``.
    """

    default_method: str = "pld"
    api_key: str | None = None
    max_queue: int = 64
    max_prompt_tokens: int | None = None
    max_tokens_limit: int = 4096
    default_max_tokens: int = 256
    max_body_bytes: int = 4 << 20
    model_aliases: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    docs: bool = False
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256
    drafter_scope: str = "shared"
    max_batch: int = 1
    speculation: str = "goodput"

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_method", canonical_method(self.default_method))
        offered = [canonical_method(m.strip()) for m in (self.methods or (self.default_method, "ar")) if m.strip()]
        if not offered:
            raise QuickdraftError("the server must offer at least one method")
        if self.default_method not in offered:
            raise QuickdraftError(f"the default method {self.default_method!r} is not among the offered "
                                  f"methods: {', '.join(offered)}")
        object.__setattr__(self, "methods", tuple(dict.fromkeys(offered)))
        if self.drafter_scope not in ("shared", "user"):
            raise QuickdraftError(f"drafter_scope must be 'shared' or 'user', got {self.drafter_scope!r}")
        if not self.allowed_hosts:
            raise QuickdraftError("allowed_hosts is empty (use '*' to allow any Host)")
        for name in ("header_timeout", "body_timeout", "max_connections"):
            if getattr(self, name) <= 0:
                raise QuickdraftError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_tokens_limit", "default_max_tokens", "max_body_bytes"):
            if getattr(self, name) <= 0:
                raise QuickdraftError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_batch < 1:
            raise QuickdraftError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.speculation not in ("goodput", "always", "never"):
            raise QuickdraftError(f"speculation must be goodput, always or never, got {self.speculation!r}")
        if self.max_queue < 0:
            raise QuickdraftError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens <= 0:
            raise QuickdraftError(f"max_prompt_tokens must be positive, got {self.max_prompt_tokens}")
        if self.api_key is not None and not self.api_key.strip():
            raise QuickdraftError("the API key is empty")

    def options_for(self, method: str) -> dict[str, Any]:
        return {**self.options.get("", {}), **self.options.get(method, {})}


def create_app(engines: Sequence[Engine], config: ServerConfig) -> FastAPI:
    """The ASGI app serving ``engines`` (one generation at a time on each; they must share one model)."""
    return Server(engines, config).app


def batch_decoder(engine: Engine, config: ServerConfig):
    """The engine's :class:`~quickdraft.batching.BatchDecoder` for ``config.max_batch`` requests, or None (with
    a warning that says why) where its backend does not batch or batched rows are not exact here."""
    from ..batching import BatchDecoder

    try:
        decoder = BatchDecoder(engine, config.max_batch, policy=config.speculation)
    except QuickdraftError as exc:
        log.warning("serving one request at a time: %s", exc)
        return None
    if not decoder.exact:
        log.warning("serving one request at a time: rows of batched passes differ from each request decoded "
                    "alone on this machine (%s)", decoder.check)
        return None
    decoder.warm(config.default_method, config.options_for(config.default_method))
    return decoder


class _Outcome:
    """Counts one generation request's status exactly once (the first report wins)."""

    def __init__(self, metrics: ServerMetrics, endpoint: str, method: str) -> None:
        self.metrics, self.endpoint, self.method = metrics, endpoint, method
        self.status: int | None = None

    def record(self, status: int) -> None:
        if self.status is None:
            self.status = status
            self.metrics.request(self.endpoint, self.method, status)


class Server:
    """The app's state: engines behind a scheduler, metrics, config."""

    def __init__(self, engines: Sequence[Engine], config: ServerConfig) -> None:
        if not engines:
            raise ValueError("the server needs at least one engine")
        self.engine = engines[0]  # for prepare() (tokenizer and limits only) and the model's name
        self.config = config
        self.model_names = {self.engine.model_name, *config.model_aliases}
        self.batch = batch_decoder(engines[0], config) if config.max_batch > 1 else None
        self.metrics = ServerMetrics(queue=lambda: (self.scheduler.waiting, self.scheduler.running),
                                     batch=None if self.batch is None else lambda: self.batch.stats)
        self.scheduler: Scheduler | BatchScheduler
        if self.batch is not None:
            self.scheduler = BatchScheduler(self.batch, max_queue=config.max_queue, observer=self.metrics)
        else:
            self.scheduler = Scheduler(engines, max_queue=config.max_queue, observer=self.metrics)
        self.started = int(time.time())
        self._watchers: set[asyncio.Task] = set()
        self.app = self._build_app()

    # ------------------------------------------------------------- app

    def _build_app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            self.scheduler.start()
            try:
                yield
            finally:
                await asyncio.to_thread(self.scheduler.stop)

        app = FastAPI(title="quickdraft", summary="OpenAI-compatible server with lossless speculative decoding",
                      lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
        if "*" not in self.config.allowed_hosts:
            app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(self.config.allowed_hosts))
        auth = [Depends(self._authorize)]
        if self.config.docs:  # FastAPI's own pages, behind the key like the API
            app.add_api_route("/openapi.json", lambda: JSONResponse(app.openapi()), methods=["GET"],
                              dependencies=auth, include_in_schema=False)
            app.add_api_route("/docs", lambda: get_swagger_ui_html(openapi_url="/openapi.json", title="quickdraft"),
                              methods=["GET"], dependencies=auth, include_in_schema=False)
            app.add_api_route("/redoc", lambda: get_redoc_html(openapi_url="/openapi.json", title="quickdraft"),
                              methods=["GET"], dependencies=auth, include_in_schema=False)
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/metrics", self.metrics_page, methods=["GET"], dependencies=auth)
        app.add_api_route("/v1/models", self.models, methods=["GET"], dependencies=auth)
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"], dependencies=auth)
        app.add_api_route("/v1/completions", self.completions, methods=["POST"], dependencies=auth)
        app.add_exception_handler(ApiError, self._api_error)
        app.add_exception_handler(StarletteHTTPException, self._http_error)
        app.add_exception_handler(Exception, self._internal_error)
        return app

    async def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _api_error(self, request: Request, exc: ApiError) -> JSONResponse:
        if request.url.path in ("/v1/chat/completions", "/v1/completions"):
            outcome = getattr(request.state, "outcome", None) or _Outcome(self.metrics, request.url.path, "")
            outcome.record(exc.status)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def _http_error(self, request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                    405: f"method {request.method} is not allowed on {request.url.path}"}
        message = messages.get(exc.status_code, exc.detail)
        return JSONResponse(ApiError(exc.status_code, str(message)).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def _internal_error(self, request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s", incident, request.url.path, exc_info=exc)
        return await self._api_error(request, ApiError(500, internal_message(incident)))

    # ------------------------------------------------------- endpoints

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.engine.model_name, "default_method": self.config.default_method,
                "methods": list(self.config.methods), "running": self.scheduler.running,
                "waiting": self.scheduler.waiting, "max_batch": 1 if self.batch is None else self.config.max_batch}

    async def metrics_page(self) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.engine.model_name, "object": "model", "created": self.started,
                                            "owned_by": "quickdraft"}]}

    async def chat_completions(self, request: Request) -> Response:
        body = parse_request(ChatCompletionRequest, await self._read_json(request))
        if body.max_completion_tokens is not None and body.max_tokens not in (None, body.max_completion_tokens):
            raise ApiError(400, "max_tokens and max_completion_tokens differ; give one", param="max_tokens")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await self._generate(request, body, body.chat_messages(), chat=True, max_tokens=max_tokens)

    async def completions(self, request: Request) -> Response:
        body = parse_request(CompletionRequest, await self._read_json(request))
        return await self._generate(request, body, body.prompt, chat=False, max_tokens=body.max_tokens)

    # ------------------------------------------------------ generation

    async def _read_json(self, request: Request) -> Any:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":  # a web page can send text/plain cross-site without a CORS preflight
            raise ApiError(415, f"the request body must be sent as Content-Type: application/json, got "
                                f"{kind or 'none'!r}")
        limit = self.config.max_body_bytes
        too_big = ApiError(413, f"the request body is larger than {limit} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []

        async def read() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.config.body_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body took longer than {self.config.body_timeout:g} s to arrive") from None
        return await asyncio.to_thread(decode_body, b"".join(chunks))  # a 4 MB body takes a while to parse

    def _offered(self, method: str | None) -> str:
        """The canonical name of a method this server offers (the default when none is asked), else a 400."""
        if method is None:
            return self.config.default_method
        try:
            name = canonical_method(method)
        except QuickdraftError as exc:
            raise ApiError(400, str(exc), param="method") from None
        if name not in self.config.methods:
            raise ApiError(400, f"method {method!r} is not offered by this server; it offers: "
                                f"{', '.join(self.config.methods)}", param="method")
        return name

    def _check_prompt_size(self, prompt: Any, *, chat: bool) -> None:
        """Refuse a prompt that cannot fit before tokenizing it: no token is longer than the vocabulary's longest
        token string, so a prompt of more characters than that times the token limit has too many tokens."""
        texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
        chars = sum(len(text) for text in texts)
        limit = self.config.max_prompt_tokens or self.engine.target.max_context
        if chars > limit * self._longest_token:
            raise ApiError(400, f"the prompt has {chars} characters: more than the {limit} tokens this server "
                                f"accepts can hold", param="messages" if chat else "prompt")

    @functools.cached_property
    def _longest_token(self) -> int:
        tokenizer = self.engine.tokenizer
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        return max(1, max(len(piece) for piece in pieces if piece is not None))

    def _check_request(self, body: GenerationFields, max_tokens: int | None) -> int:
        if body.model is not None and body.model not in self.model_names:
            raise ApiError(404, f"model {body.model!r} is not served here; this server has {self.engine.model_name!r}",
                           param="model", code="model_not_found")
        if max_tokens is None:
            return min(self.config.default_max_tokens, self.config.max_tokens_limit)
        if max_tokens <= 0:
            raise ApiError(400, f"max_tokens must be a positive integer, got {max_tokens}", param="max_tokens")
        if max_tokens > self.config.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of "
                                f"{self.config.max_tokens_limit}", param="max_tokens")
        return max_tokens

    async def _generate(self, request: Request, body: GenerationFields, prompt: Any, *, chat: bool,
                        max_tokens: int | None) -> Response:
        method = self._offered(body.method)
        outcome = request.state.outcome = _Outcome(self.metrics, request.url.path, method)
        max_new_tokens = self._check_request(body, max_tokens)
        self._check_prompt_size(prompt, chat=chat)
        try:  # tokenizing a long prompt takes a while: off the event loop, so other streams go on
            prepared = await asyncio.to_thread(
                self.engine.prepare, prompt, method=method, max_new_tokens=max_new_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0, seed=body.seed,
                stop=body.stop, chat=chat, tenant=body.user if self.config.drafter_scope == "user" else None,
                max_draft=body.max_draft,
            )
        except QuickdraftError as exc:
            raise ApiError(400, str(exc)) from None
        limit = self.config.max_prompt_tokens
        if limit is not None and len(prepared.prompt_ids) > limit:
            raise ApiError(400, f"the prompt has {len(prepared.prompt_ids)} tokens; this server accepts at most "
                                f"{limit}", param="messages" if chat else "prompt")

        job = Job(prepared, method=method, options=self.config.options_for(method), loop=asyncio.get_running_loop())
        try:
            self.scheduler.submit(job)
        except ServerBusy as exc:
            raise ApiError(429, str(exc), type="server_busy", headers={"Retry-After": "1"}) from None
        self._watch(request, job, outcome)

        items = job.items()
        first = await anext(items, None)  # wait for the generation to start, so early errors get a 4xx/5xx
        if first is None:  # cancelled: the client is gone
            outcome.record(CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)
        _raise_if_error(first)
        reply = Reply(chat=chat, model=self.engine.model_name)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._events(reply, first, items, job, outcome, include_usage=include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = first
        async for item in items:
            result = item
        if job.cancelled.is_set():
            outcome.record(CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)
        _raise_if_error(result)
        outcome.record(200)
        return JSONResponse(reply.response(result))

    async def _events(self, reply: Reply, first: Any, items: AsyncIterator[Any], job: Job, outcome: _Outcome, *,
                      include_usage: bool) -> AsyncIterator[str]:
        """The event stream: an opening chunk, text chunks, closing chunks, ``data: [DONE]``."""
        finished = False
        try:
            opening = reply.opening_chunk()
            if opening is not None:
                yield sse(opening)
            item = first
            while True:
                if isinstance(item, str):
                    yield sse(reply.text_chunk(item))
                elif isinstance(item, GenerationResult):
                    for chunk in reply.closing_chunks(item, include_usage=include_usage):
                        yield sse(chunk)
                else:  # the generation failed after the stream started: an error event, as OpenAI sends
                    error = _as_api_error(item)
                    outcome.record(error.status)
                    yield sse(error.body())
                item = await anext(items, None)
                if item is None:
                    break
            if not job.cancelled.is_set():
                yield sse("[DONE]")
                finished = True
        finally:
            if not finished:
                self.scheduler.cancel(job)
            outcome.record(200 if finished else CLIENT_GONE)

    def _watch(self, request: Request, job: Job, outcome: _Outcome) -> None:
        """Cancel ``job`` if the client disconnects before it ends (runs beside the handler and the stream)."""
        task = asyncio.get_running_loop().create_task(self._cancel_on_disconnect(request.receive, job, outcome))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _cancel_on_disconnect(self, receive: Callable[[], Awaitable[dict]], job: Job, outcome: _Outcome) -> None:
        gone = asyncio.ensure_future(_disconnected(receive))
        done = asyncio.ensure_future(job.finished.wait())
        try:
            await asyncio.wait({gone, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            done.cancel()
        if gone.done() and not gone.cancelled() and not job.finished.is_set():
            self.scheduler.cancel(job)
            outcome.record(CLIENT_GONE)


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return once the ASGI server reports that the client went away (the body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _as_api_error(item: Exception) -> ApiError:
    if isinstance(item, QuickdraftError):
        return ApiError(400, str(item))
    incident = uuid.uuid4().hex[:12]
    log.error("generation failed: internal error %s", incident, exc_info=item)
    return ApiError(500, internal_message(incident))


def internal_message(incident: str) -> str:
    """A 500's message: no exception text (it can carry internals or the request's own data), an id to find
    the server's log entry by."""
    return f"internal server error (incident {incident} in the server log)"


def _raise_if_error(item: Any) -> None:
    if isinstance(item, Exception):
        raise _as_api_error(item)
