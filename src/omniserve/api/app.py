"""The ASGI application: routers, error envelope, and the service's lifetime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omniserve import __version__
from omniserve.accounts.service import Accounts
from omniserve.allocator import map_large_blocks
from omniserve.api import admin, chat, models, realtime, speech, transcriptions
from omniserve.api.auth import guard
from omniserve.api.drain import Drain, shutting_down
from omniserve.api.errors import error_response, install_error_handlers
from omniserve.api.faults import quiet_drops
from omniserve.api.guard import HttpGuard
from omniserve.cassettes import from_settings
from omniserve.config import Settings
from omniserve.errors import ServiceUnavailable
from omniserve.metrics import CONTENT_TYPE, OTHER, Metrics
from omniserve.service import ChatService
from omniserve.web import playground_router

health = APIRouter(dependencies=[Depends(guard("public"))])


@health.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


@health.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    """The engine is loaded, speech is available, and the accounts database and the shared
    limiter (Redis, when configured) answer."""
    service: ChatService = request.app.state.service
    accounts: Accounts = request.app.state.accounts
    if not service.ready:
        return error_response(ServiceUnavailable("The engine is not ready yet."))
    if request.app.state.drain.draining:
        return error_response(shutting_down())
    problem = await accounts.check_database()
    if problem is not None:
        return error_response(
            ServiceUnavailable(f"The accounts database is unavailable: {problem}")
        )
    problem = await accounts.check_limiter()
    if problem is not None:
        return error_response(ServiceUnavailable(f"The rate limiter is unavailable: {problem}"))
    return JSONResponse({"status": "ready", "engine": service.engine.name})


operator = APIRouter(dependencies=[Depends(guard("admin"))])


@operator.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (admin: they name models, volumes and error rates)."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)


class HttpMetrics:
    """Counts every HTTP response by route template and status (unknown paths: ``other``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = getattr(scope.get("route"), "path", None) or OTHER
            self.metrics.http.labels(route, str(status)).inc()


def create_app(settings: Settings | None = None, *, service: ChatService | None = None) -> FastAPI:
    """An app around ``service`` (built from ``settings`` when not given)."""
    settings = settings or (service.settings if service else Settings())
    # A replay directory that cannot be replayed stops the server here, before it starts.
    recorder, replayer = from_settings(settings.cassettes)
    svc = service or ChatService(settings)
    metrics = Metrics(m.name for m in svc.models())
    accounts = Accounts(settings.accounts, svc.tokenizer, metrics=metrics)
    svc.attach(accounts, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        map_large_blocks()
        metrics.watch_loop(asyncio.get_running_loop())
        await accounts.start()
        if accounts.writer is not None:
            metrics.watch_ledger(accounts.writer.depth)
        try:
            await svc.start()
            lag = asyncio.create_task(metrics.watch_lag())
            try:
                yield
            finally:
                lag.cancel()
                await svc.close()
        finally:
            await accounts.close()

    app = FastAPI(
        title="omniserve",
        version=__version__,
        description="The Qwen-Omni API (OpenAI-compatible mode), self-hosted.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = svc
    app.state.accounts = accounts
    app.state.metrics = metrics
    app.state.drain = Drain()
    app.state.recorder = recorder
    app.state.replayer = replayer
    # Outermost first: HttpMetrics sees every answer, the guard's refusals included.
    app.add_middleware(HttpGuard, settings=settings.http, keys_required=accounts.keys_required)
    app.add_middleware(HttpMetrics, metrics=metrics)
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    quiet_drops()
    app.include_router(chat.router)
    app.include_router(speech.router)
    app.include_router(realtime.router)
    app.include_router(models.router)
    app.include_router(transcriptions.router)
    app.include_router(admin.router)
    app.include_router(health)
    app.include_router(operator)
    app.include_router(_docs(app))
    if settings.playground:
        app.include_router(playground_router(accounts, Depends(guard("public"))))
    return app


def _docs(app: FastAPI) -> APIRouter:
    """The OpenAPI schema and its browsable page, public like the vendor's documentation."""
    docs = APIRouter(dependencies=[Depends(guard("public"))])

    @docs.get("/openapi.json", include_in_schema=False)
    async def openapi() -> Response:
        return JSONResponse(app.openapi())

    @docs.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="omniserve API")

    return docs
