"""`LoopbackGuard`: while the API runs open (no tokens), answer only this machine.

An open API on 127.0.0.1 (`orchestrator up`) is still reachable from any web page the user
opens: a page can send "simple" cross-site requests (a POST with `text/plain` needs no CORS
preflight) and, by DNS rebinding (its own name resolving to 127.0.0.1), read the answers.
So, while authentication is off:

- a request whose `Host` is not a loopback name or address (or one of ORCH_ALLOWED_HOSTS) is
  refused: a rebound page sends its own name as the Host;
- a request other than GET/HEAD/OPTIONS that carries an `Origin` not of such a host is refused:
  that is a page of another site writing.

Both get a 403 JSON error before any route runs, so nothing is written. With tokens the
bearer header is the defence (browsers never add it to a cross-site request on their own).
While it cannot tell (the database is down and authentication is not yet known to be on),
it answers 503 in the house error format, as a route would.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.errors import error_response
from orchestrator.auth import Authenticator, is_loopback
from orchestrator.errors import Unavailable

logger = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def parse_allowed_hosts(value: str) -> frozenset[str]:
    """ORCH_ALLOWED_HOSTS: comma-separated names, lower-cased, brackets stripped."""
    return frozenset(_bare(h) for h in value.split(",") if h.strip())


def _bare(host: str) -> str:
    host = host.strip().lower()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def host_of(header: str) -> str:
    """The host of a Host header value, without its port (`[::1]:8014` → `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header  # a bare IPv6 address, or no port


class LoopbackGuard:
    def __init__(self, app: ASGIApp, auth: Authenticator, allowed_hosts: str) -> None:
        self.app = app
        self.auth = auth
        self.allowed = parse_allowed_hosts(allowed_hosts)

    def allows(self, host: str) -> bool:
        return "*" in self.allowed or host in self.allowed or is_loopback(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            auth_on = await self._auth_enabled()
        except Unavailable as exc:
            # Outside the app's error handlers (this runs before them): answer as they would.
            logger.error("request failed: %s", exc.message, extra={"event": "request_failed"})
            response = error_response(503, exc.code, exc.message, exc.details or None)
            await response(scope, receive, send)
            return
        if auth_on:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_of(headers.get("host", ""))
        if not self.allows(host):
            await _refuse(
                send,
                "forbidden_host",
                f"the API runs open (no tokens) and answers only on this machine: Host {host!r} "
                "is not loopback (add it to ORCH_ALLOWED_HOSTS if it is yours)",
            )
            return
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            origin_host = _bare(urlsplit(origin).hostname or "") if origin != "null" else ""
            if not origin_host or not self.allows(origin_host):
                await _refuse(
                    send,
                    "forbidden_origin",
                    f"the API runs open (no tokens): a {scope['method']} from a page of "
                    f"{origin[:100]!r} is refused (cross-site requests change nothing)",
                )
                return
        await self.app(scope, receive, send)

    async def _auth_enabled(self) -> bool:
        # Once on, it stays on and costs nothing; until then it may look the database up
        # (once per ORCH_AUTH_CACHE_TTL_S): off the event loop. Between lookups the answer
        # is in memory: no thread-pool round trip for it.
        known = self.auth.enabled_cached()
        if known is not None:
            return known
        return await run_in_threadpool(self.auth.enabled)


async def _refuse(send: Send, error: str, message: str) -> None:
    body = json.dumps({"error": error, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
