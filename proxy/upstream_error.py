"""The one error type for "the origin gave no usable response" (502 or 504), shared by both origin clients."""

from __future__ import annotations


class UpstreamError(Exception):
    """The origin could not give a usable response; `status_hint` is 502 or 504."""

    def __init__(self, status_hint: int, reason: str) -> None:
        super().__init__(reason)
        self.status_hint = status_hint
        self.reason = reason
