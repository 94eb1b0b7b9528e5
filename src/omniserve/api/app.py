"""The ASGI application: routers, error envelope, and the service's lifetime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse, Response

from omniserve import __version__
from omniserve.accounts.admission import Accounts
from omniserve.api import admin, chat, models
from omniserve.api.auth import guard
from omniserve.api.errors import error_response, install_error_handlers
from omniserve.config import Settings
from omniserve.errors import ServiceUnavailable
from omniserve.service import ChatService

health = APIRouter(dependencies=[Depends(guard("public"))])


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
    accounts = Accounts(settings.accounts, svc.tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await accounts.start()
        try:
            await svc.start()
            try:
                yield
            finally:
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
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(admin.router)
    app.include_router(health)
    app.include_router(_docs(app))
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
