"""The admin API from the command line's side: blocking JSON calls with urllib (stdlib only).

Every failure becomes an `AdminClientError` whose message says what went
wrong (cannot connect, the token was refused, the status and the server's
error text); the CLI prints it and exits 1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_TIMEOUT = 10.0


class AdminClientError(Exception):
    """A call to the admin API failed; the message is meant for the operator."""


def url_for_listen(listen: str) -> str:
    """http://HOST:PORT for a listen address, with a wildcard host replaced by loopback."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class AdminClient:
    """JSON calls to one node's admin API."""

    def __init__(self, base_url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        # The admin API is local or internal: never route it through an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def healthz(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def purge(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/purge", body)

    def entries(self, *, prefix: str | None, tag: str | None, limit: int) -> list[dict[str, Any]]:
        query: dict[str, str] = {"limit": str(limit)}
        if prefix is not None:
            query["prefix"] = prefix
        if tag is not None:
            query["tag"] = tag
        data = self._call("GET", "/entries?" + urllib.parse.urlencode(query))
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise AdminClientError(f"the admin API at {self.base_url} answered without an entries list")
        return entries

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def readiness(self) -> dict[str, Any]:
        """/readyz's report, ready or not (a 503 is an answer here, not an error)."""
        return self._call("GET", "/readyz", answers=(503,))

    def reload(self) -> dict[str, Any]:
        return self._call("POST", "/reload", {})

    def _call(
        self, method: str, path: str, body: Any = None, answers: tuple[int, ...] = ()
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code not in answers:
                raise AdminClientError(self._http_error(exc)) from None
            with exc:
                raw = exc.read()
        except urllib.error.URLError as exc:
            raise AdminClientError(
                f"cannot connect to the admin API at {self.base_url}: {exc.reason}"
            ) from None
        except (OSError, ValueError) as exc:
            # Timeouts, resets and malformed responses after the connection was made.
            raise AdminClientError(f"cannot talk to the admin API at {self.base_url}: {exc}") from None
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise AdminClientError(f"the admin API at {self.base_url} did not answer with JSON") from None
        if not isinstance(decoded, dict):
            raise AdminClientError(f"the admin API at {self.base_url} answered with unexpected JSON")
        return decoded

    def _http_error(self, exc: urllib.error.HTTPError) -> str:
        try:
            text = exc.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        finally:
            exc.close()
        message = text.strip()
        try:
            decoded = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
                message = decoded["error"]
        if exc.code == 401:
            hint = "" if self.token else "; no token was given (--token or MINICDN_ADMIN_TOKEN)"
            return f"admin API refused the token (401){hint}"
        detail = f": {message[:500]}" if message else ""
        return f"admin API at {self.base_url} answered {exc.code} {exc.reason}{detail}"
