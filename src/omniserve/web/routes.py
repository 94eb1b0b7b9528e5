"""``/`` and ``/playground``: the page; ``/playground/<asset>``: its files; public routes.

Assets are read once from the package and named in a fixed table, so no request path ever
reaches the file system. Each carries a content hash as its ETag and must be revalidated, so an
upgraded server never leaves a browser on stale scripts.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from omniserve import __version__
from omniserve.accounts.service import Accounts
from omniserve.errors import NotFound

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# The page runs only its own files and talks only to its own origin. Media the user picks
# become blob: and data: URLs; pasted http(s) media URLs are fetched by the server, not the page.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "permissions-policy": "microphone=(self), camera=(), geolocation=()",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    gzipped: bytes  # compressed once at start-up: the page is about 86 kB, 28 kB gzipped

    @property
    def gzip_etag(self) -> str:
        return self.etag[:-1] + '-gzip"'


def _load() -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for entry in resources.files("omniserve.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        assets[entry.name] = Asset(body, TYPES[suffix], etag, packed)
    return assets


ASSETS = _load()


def _accepts_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _serve(request: Request, asset: Asset) -> Response:
    packed = _accepts_gzip(request)
    etag = asset.gzip_etag if packed else asset.etag
    headers = {
        "etag": etag,
        "cache-control": "no-cache",
        "vary": "accept-encoding",
        **SECURITY_HEADERS,
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if packed:
        headers["content-encoding"] = "gzip"
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def playground_router(accounts: Accounts, public: Any) -> APIRouter:
    """The page at ``/`` and ``/playground``, its files, and what it needs to know first.
    ``public`` is the API's dependency that declares a route open to everyone (the API
    passes it in, so the page's package does not import the API's)."""
    router = APIRouter(dependencies=[public])

    async def page(request: Request) -> Response:
        return _serve(request, ASSETS["index.html"])

    router.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    router.add_api_route("/playground", page, methods=["GET"], include_in_schema=False)

    @router.get("/playground/config.json", include_in_schema=False)
    async def config() -> Response:
        """Whether the page must ask for a key before anything else works."""
        required = await accounts.keys_required()
        return JSONResponse(
            {"version": __version__, "api_key_required": required},
            headers={"cache-control": "no-store"},
        )

    @router.get("/playground/{name}", include_in_schema=False)
    async def asset(request: Request, name: str) -> Response:
        found = ASSETS.get(name)
        if found is None or name == "index.html":
            raise NotFound(f"The path {request.url.path} does not exist.")
        return _serve(request, found)

    return router
