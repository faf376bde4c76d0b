"""A minimal JSON-over-HTTP client (stdlib only): the demo, the tests and ``wait_ready`` use it."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any, Optional


def call(url: str, path: str, body: Any = None, method: str = "POST", raw: Optional[bytes] = None,
         timeout_s: float = 60.0) -> tuple[int, Any]:
    """(status, decoded JSON answer); a 4xx/5xx is returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode("utf-8", "replace")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
