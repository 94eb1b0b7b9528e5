"""The ASGI application: routers, error envelope, and the service's lifetime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse, Response

from omniserve import __version__
from omniserve.api import chat, models
from omniserve.api.errors import error_response, install_error_handlers
from omniserve.config import Settings
from omniserve.errors import ServiceUnavailable
from omniserve.service import ChatService

health = APIRouter()


@health.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


@health.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    """The engine is loaded and speech is available."""
    service: ChatService = request.app.state.service
    if not service.ready:
        return error_response(ServiceUnavailable("The engine is not ready yet."))
    return JSONResponse({"status": "ready", "engine": service.engine.name})


def create_app(settings: Settings | None = None, *, service: ChatService | None = None) -> FastAPI:
    """An app around ``service`` (built from ``settings`` when not given)."""
    settings = settings or (service.settings if service else Settings())
    svc = service or ChatService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        try:
            yield
        finally:
            await svc.close()

    app = FastAPI(
        title="omniserve",
        version=__version__,
        description="The Qwen-Omni API (OpenAI-compatible mode), self-hosted.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = svc
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(health)
    return app
