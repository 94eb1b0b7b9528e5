"""The one place an ``ApiError`` becomes the DashScope error envelope."""

from __future__ import annotations

import json
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.websockets import WebSocket

from omniserve.errors import ApiError, HttpError, InvalidParameter, MethodNotAllowed, NotFound
from omniserve.job import new_request_id


def error_envelope(exc: ApiError, request_id: str) -> bytes:
    """``{"error": {...}, "id": "chatcmpl-<id>", "request_id": "<id>"}``, as the vendor sends."""
    body = {"error": exc.body(), "id": f"chatcmpl-{request_id}", "request_id": request_id}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def render_error(exc: ApiError, request_id: str) -> tuple[int, Mapping[str, str], bytes]:
    headers = {"x-request-id": request_id, **exc.headers()}
    return exc.status, headers, error_envelope(exc, request_id)


def error_response(exc: ApiError, request_id: str | None = None) -> Response:
    status, headers, payload = render_error(exc, request_id or new_request_id())
    return Response(
        payload, status_code=status, headers=dict(headers), media_type="application/json"
    )


def validation_error(exc: RequestValidationError) -> InvalidParameter:
    """The framework's validation errors as one readable message: where and what, never the
    server's source lines."""
    parts: list[str] = []
    param: str | None = None
    for error in exc.errors()[:5]:
        loc = [str(x) for x in error.get("loc", ()) if x not in ("body", "query", "path")]
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    message = "Invalid request: " + "; ".join(parts) if parts else "Invalid request."
    return InvalidParameter(message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the framework raises leaves in the same envelope as the API's own."""

    async def on_api_error(request: Request, exc: Exception) -> Response | None:
        assert isinstance(exc, ApiError)
        if isinstance(request, WebSocket):  # refused on the upgrade: an HTTP answer, no socket
            await request.send_denial_response(error_response(exc))
            return None  # answered: nothing more to send
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(NotFound(f"The path {request.url.path} does not exist."))
        if exc.status_code == 405:
            return error_response(
                MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
            )
        return error_response(HttpError(exc.status_code, str(exc.detail)))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # The client left while sending its body: not an error of ours, nothing to log.
        return Response(status_code=499)

    app.add_exception_handler(ClientDisconnect, on_client_gone)
    # One handler for both kinds of connection; Starlette's types split them in two.
    app.add_exception_handler(ApiError, on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
