"""Connection limits for uvicorn: at most so many connections, and none that idles through its headers.

uvicorn closes a connection that idles *between* requests (``timeout_keep_alive``)
but not one that never finishes sending its request headers: each such
connection holds a file descriptor for good, and a few hundred of them starve the
server (the slowloris attack). :class:`HeaderDeadline` is uvicorn's own h11
protocol with a deadline from the moment a connection opens, or its previous
response ends, until the next request's headers are complete.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol; a connection whose request headers are not complete ``header_timeout`` seconds
    after it opened (or after its previous response) is closed."""

    header_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers were complete: the application has it now
            self._disarm()

    def on_response_complete(self) -> None:
        # The next request's headers are on the clock too. Armed first: uvicorn may start a pipelined
        # request inside on_response_complete, and handle_events then disarms it again.
        self._arm()
        super().on_response_complete()
        if self.transport.is_closing():
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app, config, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                   **kwargs) -> uvicorn.Config:
    """A uvicorn configuration for the app with the server's connection limits (``config``: a ServerConfig)."""
    protocol = type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": float(config.header_timeout)})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          limit_concurrency=config.max_connections, timeout_keep_alive=5,
                          timeout_graceful_shutdown=5, **kwargs)
