"""The load generator's HTTP client: the standard library's `http.client` on one keep-alive
connection, JSON in and out.

The latency figures are the server's, so the client must cost next to nothing: on two cores
shared with the server, MariaDB and Redis, httpx spent about 0.4 ms of CPU per request here
(a bare `GET /health` took 0.96 ms p50 through httpx, 0.58 ms through this), which the
figures would have counted as ours. `scripts/bench` still prints one submit figure through
httpx, what a Python caller of the SDK sees.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

JSON_HEADERS = {"Content-Type": "application/json"}


class LeanClient:
    def __init__(self, url: str, timeout: float = 30) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout
        )

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON body)."""
        if body is None:
            self._conn.request(method, path)
        else:
            self._conn.request(method, path, body=json.dumps(body), headers=JSON_HEADERS)
        response = self._conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LeanClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
