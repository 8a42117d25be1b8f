"""``quickdraft serve``: an OpenAI-compatible HTTP server over the engine.

From Python (what the command does)::

    from quickdraft import load
    from quickdraft.server import ServerConfig, serve

    serve(load("smollm2-135m-instruct"), ServerConfig(default_method="pld"), port=8000)

``create_app(engines, config)`` gives the ASGI app itself, to run under any ASGI server.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

from ..engine import Engine
from ..errors import QuickdraftError
from .app import LOOPBACK_HOSTS, ServerConfig, create_app, default_method
from .connections import uvicorn_config

LOOPBACK = LOOPBACK_HOSTS


def serve(engine: Engine, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000,
          max_concurrency: int = 1, log_level: str = "info") -> None:
    """Serve ``engine`` until interrupted.

    max_concurrency: generations run at the same time, each on its own engine
    sharing the loaded weights (on a CPU with few cores, 1 is fastest overall;
    more requests wait in the queue).
    """
    import logging

    import uvicorn

    if max_concurrency <= 0:
        raise QuickdraftError(f"max_concurrency must be positive, got {max_concurrency}")
    if not 0 <= port <= 65535:
        raise QuickdraftError(f"port must be in 0..65535, got {port}")
    if host not in LOOPBACK and config.api_key is None:
        logging.getLogger(__name__).warning(
            "serving on %s without an API key: anyone who can reach this address can use the model", host)
    engines = [engine, *(Engine(engine.target) for _ in range(max_concurrency - 1))]
    server = uvicorn.Server(uvicorn_config(create_app(engines, config), config, host=host, port=port,
                                           log_level=log_level))
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C (or SIGINT) after a graceful shutdown: a normal end, as uvicorn.run has it
        pass
    if not server.started:
        raise QuickdraftError(f"the server could not start on {host}:{port} (see the log above)")


@contextmanager
def running(engines: Sequence[Engine], config: ServerConfig, *, log_level: str = "warning",
            start_timeout: float = 120.0) -> Iterator[str]:
    """Run the app on a free loopback port in a thread of this process; yield its base URL; shut it down
    (lifespan included). For tests and the load benchmark."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(create_app(engines, config), config, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise QuickdraftError("the server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


__all__ = ["ServerConfig", "create_app", "default_method", "running", "serve", "uvicorn_config"]
