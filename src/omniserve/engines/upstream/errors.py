"""Upstream failures -> omniserve's errors, in the DashScope envelope with the right status.

Model Studio's own 400 and 429 errors pass through verbatim. Other servers' client errors (400)
keep their message; credential and routing errors (401, 403, 404) are omniserve's configuration,
so the client gets a 503 that does not leak the upstream's details; overload (429) stays a 429
with ``Retry-After``; server errors become a 503. ``retryable`` says whether another replica may
succeed where this one failed.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from omniserve.errors import VendorError


class UpstreamError(VendorError):
    """An error answered by, or about, an upstream; ``retryable``: another replica may
    succeed."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        type: str,
        param: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, status=status, code=code, type=type, param=param, retry_after=retry_after
        )
        self.retryable = retryable


class UpstreamBroken(UpstreamError):
    """The upstream could not be reached, or its stream broke or made no sense."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"The model service is unavailable: {detail}.",
            status=503,
            code="ServiceUnavailable",
            type="service_unavailable",
            retryable=True,
        )


class UpstreamBusy(UpstreamError):
    """Every connection to the model service is streaming and the waiting line is full."""

    def __init__(self) -> None:
        super().__init__(
            "Too many streams are open to the model service; retry in a moment.",
            status=503,
            code="ServiceUnavailable",
            type="service_unavailable",
            retry_after=1.0,
        )


def _inner(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            return inner
        if body.get("object") == "error":
            return body
    return {}


def upstream_error(
    status: int | None, body: Any, *, dashscope: bool = False, retry_after: float | None = None
) -> UpstreamError:
    """The client's error for an upstream's HTTP ``status`` (None: an error event mid-stream)."""
    inner = _inner(body)
    message = str(inner.get("message") or "").strip() or "no message"
    code = inner.get("code")
    if status is None and isinstance(code, int):
        status = code
    if dashscope and isinstance(code, str) and status in (400, 429):
        return UpstreamError(
            message,
            status=status,
            code=code,
            type=str(inner.get("type") or "invalid_request_error"),
            param=inner.get("param") if isinstance(inner.get("param"), str) else None,
            retryable=status == 429,
            retry_after=retry_after,
        )
    if status is None or status >= 500:
        return UpstreamError(
            f"The model service failed: {message}",
            status=503,
            code="ServiceUnavailable",
            type="service_unavailable",
            retryable=True,
        )
    if status in (408, 429):
        return UpstreamError(
            "You have exceeded your current request limit. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#rate-limit",
            status=429,
            code="limit_requests",
            type="limit_requests",
            retryable=True,
            retry_after=retry_after if retry_after is not None else 1.0,
        )
    if status in (401, 403, 404):
        return UpstreamError(
            f"The model service refused the request ({status}); check omniserve's upstream "
            "configuration.",
            status=503,
            code="ServiceUnavailable",
            type="service_unavailable",
            retryable=False,
        )
    return UpstreamError(
        message,
        status=400,
        code="invalid_parameter_error",
        type="invalid_request_error",
        param=inner.get("param") if isinstance(inner.get("param"), str) else None,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def describe(exc: BaseException) -> str:
    """What went wrong with a connection, in a few words."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "cannot connect"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, httpx.ReadTimeout):
        return "the stream stalled"
    return "the connection broke"


async def refusal(response: httpx.Response, *, dashscope: bool) -> UpstreamError:
    """The client's error for an upstream's answer other than 200 (its body is read)."""
    raw = await response.aread()
    body: Any = None
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    return upstream_error(
        response.status_code, body, dashscope=dashscope, retry_after=_retry_after(response)
    )
