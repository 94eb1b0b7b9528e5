"""The one way omniserve reads a media source: data URLs decoded, http(s) URLs fetched safely.

Each hop of a download is resolved once, every address is checked with ``AddressPolicy``, and
the connection goes to a checked address only (it is pinned), so DNS rebinding cannot move a
download into a private network. Bytes are capped while they arrive, never after.

A download holds one of the server's slots, and one of its caller's (so one caller cannot hold
them all), for as long as it runs; one that drips its bytes is cut once it falls below a
minimum rate, so slow servers cannot hold slots until the total deadline.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import socket
import ssl
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from ipaddress import IPv4Address, ip_address
from typing import Any

import httpcore
import httpx

from omniserve.config import MediaSettings
from omniserve.errors import InvalidMedia
from omniserve.media.resolve import AddressPolicy, IPAddress, Resolver, SystemResolver
from omniserve.media.sources import DATA_URL, INVALID_URL

FAILED = "Failed to download multimodal content."
_NO_SPACE = str.maketrans("", "", " \t\r\n\f\v")  # whitespace base64 text may contain
_WINDOW = 1 << 16  # base64 characters decoded at a time
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = (301, 302, 303, 307, 308)


def _failure(detail: str) -> InvalidMedia:
    return InvalidMedia(f"{FAILED} {detail}")


def _too_large(max_bytes: int) -> InvalidMedia:
    return _failure(f"The file is larger than {max_bytes} bytes.")


def decode_base64(source: str, *, max_bytes: int, data_url: bool) -> bytes:
    """Strict base64 (ASCII whitespace allowed), refused the moment it passes ``max_bytes``.

    Decoded a window at a time into one buffer, so no full copy of the text is ever made.
    """
    start = 0
    if data_url:
        header = DATA_URL.match(source)
        if header is None:
            raise InvalidMedia(INVALID_URL)
        start = header.end()
    out = io.BytesIO()
    carry, padded = "", False
    for pos in range(start, len(source), _WINDOW):
        text = carry + source[pos : pos + _WINDOW].translate(_NO_SPACE)
        cut = len(text) - len(text) % 4  # whole quanta only; the rest waits for the next window
        text, carry = text[:cut], text[cut:]
        if not text:
            continue
        if padded:  # padding may only end the data
            raise InvalidMedia(INVALID_URL)
        padded = text.endswith("=")
        if out.tell() + cut // 4 * 3 - text[-2:].count("=") > max_bytes:
            raise _too_large(max_bytes)
        try:
            out.write(binascii.a2b_base64(text, strict_mode=True))
        except ValueError:  # binascii.Error, and non-ASCII text
            raise InvalidMedia(INVALID_URL) from None
    if carry:
        raise InvalidMedia(INVALID_URL)
    return out.getvalue()  # no copy: BytesIO hands over its buffer


def parse_url(source: str) -> httpx.URL:
    """An absolute http(s) URL with a host and no credentials, or ``INVALID_URL``."""
    try:
        url = httpx.URL(source)
    except (httpx.InvalidURL, ValueError, TypeError):  # ValueError includes UnicodeError
        raise InvalidMedia(INVALID_URL) from None
    if not _fetchable(url):
        raise InvalidMedia(INVALID_URL)
    return url


def _fetchable(url: httpx.URL) -> bool:
    port_ok = url.port is None or 0 < url.port < 65536
    return url.scheme in _DEFAULT_PORTS and bool(url.raw_host) and not url.userinfo and port_ok


def literal_ip(host: str) -> IPAddress | None:
    """The address a host names by itself, in any form ``inet_aton`` reads (``0x7f.1``)."""
    try:
        return ip_address(host)
    except ValueError:
        pass
    try:
        return IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


# The checked addresses of the hop the current task is fetching; read at connect time.
_PIN: ContextVar[_Pin | None] = ContextVar("omniserve_media_pin", default=None)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses checked for this host in this task: it never resolves names."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore passes it by name)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or (pin.host, pin.port) != (host, port):
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        error: Exception | None = None
        for ip in pin.addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore passes it by name)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("media are never read from unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _RateFloor:
    """Cuts one hop that averages less than ``rate`` bytes a second after its first ``grace``
    seconds: its deadline moves on by 1/``rate`` seconds for every byte that arrives."""

    def __init__(self, rate: int, grace: float) -> None:
        self._rate = rate
        self._start = asyncio.get_running_loop().time() + grace
        self.received = 0
        self.timeout = asyncio.timeout_at(self._start if rate else None)

    def got(self, size: int) -> None:
        self.received += size
        if self._rate:
            self.timeout.reschedule(self._start + self.received / self._rate)

    def message(self) -> str:
        return f"The server sent the file slower than {self._rate} bytes a second."


class _CallerSlots:
    """At most ``per_caller`` downloads at once for each caller; callers are forgotten when
    their last download ends."""

    def __init__(self, per_caller: int) -> None:
        self._per_caller = per_caller
        self._held: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def slot(self, caller: str | None) -> AsyncIterator[None]:
        if caller is None:
            yield
            return
        gate, users = self._held.get(caller, (None, 0))
        if gate is None:
            gate = asyncio.Semaphore(self._per_caller)
        self._held[caller] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self._held[caller]
            if users == 1:
                del self._held[caller]
            else:
                self._held[caller] = (gate, users - 1)

    def __len__(self) -> int:
        return len(self._held)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _PinnedTransport(httpx.AsyncBaseTransport):
    """httpx over an httpcore pool with the pinned backend.

    URLs keep their host names, so the ``Host`` header, TLS SNI and certificate checks use the
    name, and pooled connections are keyed by name: two sites sharing a CDN address never share
    a TLS connection, as they would if requests were rewritten to the address.
    """

    def __init__(self, settings: MediaSettings) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=settings.fetch_concurrency,
            max_keepalive_connections=settings.fetch_concurrency,
            keepalive_expiry=5.0,
            network_backend=_PinnedBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        response = await self._pool.handle_async_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
                ),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class MediaFetcher:
    """Reads every media source for the server: data URLs, bare base64 and http(s) downloads.

    Every failure is an ``InvalidMedia`` (HTTP 400) with a message saying what went wrong.
    """

    def __init__(self, settings: MediaSettings, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._resolver: Resolver = resolver or SystemResolver()
        self._policy = AddressPolicy(settings.allow_hosts)
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._callers = _CallerSlots(min(settings.caller_concurrency, settings.fetch_concurrency))
        self._loop: asyncio.AbstractEventLoop | None = None

    async def fetch(
        self, source: str, *, max_bytes: int, bare_base64: bool = False, caller: str | None = None
    ) -> bytes:
        """The bytes of ``source``, at most ``max_bytes`` of them. ``caller`` names who asks
        (downloads at once are capped per caller); None: only the server-wide cap applies."""
        try:
            if source[:1].isspace() or source[-1:].isspace():
                source = source.strip()
            head = source[:8].lower()
            if head.startswith("data:"):
                return decode_base64(source, max_bytes=max_bytes, data_url=True)
            if head.startswith(("http://", "https://")):
                return await self._download(parse_url(source), max_bytes, caller)
            if bare_base64 and source:
                return decode_base64(source, max_bytes=max_bytes, data_url=False)
            raise InvalidMedia(INVALID_URL)
        except InvalidMedia:
            raise
        except Exception as exc:  # a fault of ours or a library's: still the client's 400
            raise InvalidMedia(FAILED) from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The pooled client and download slots, made in (and for) the running loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._slots is None or self._loop is not loop:
            s = self._settings
            self._client = httpx.AsyncClient(
                transport=_PinnedTransport(s),
                follow_redirects=False,
                trust_env=False,  # no proxies or .netrc credentials from the environment
                # One user's cookies must never reach another user's download.
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
                timeout=httpx.Timeout(
                    connect=s.connect_timeout_s,
                    read=s.read_timeout_s,
                    write=s.read_timeout_s,
                    pool=s.total_timeout_s,
                ),
                # Compressed bodies would defeat the byte cap; identity is what we ask for.
                headers={"User-Agent": s.user_agent, "Accept-Encoding": "identity"},
            )
            self._slots = asyncio.Semaphore(s.fetch_concurrency)
            self._callers = _CallerSlots(min(s.caller_concurrency, s.fetch_concurrency))
            self._loop = loop
        return self._client, self._slots

    async def _download(self, url: httpx.URL, max_bytes: int, caller: str | None) -> bytes:
        client, slots = self._session()
        total = self._settings.total_timeout_s
        # The caller's slot first: a caller waiting on its own cap holds no server slot.
        async with self._callers.slot(caller), slots:  # the deadline starts once slots are ours
            deadline = asyncio.timeout(total)
            try:
                async with deadline:
                    for _ in range(self._settings.max_redirects + 1):
                        result = await self._hop(client, url, max_bytes)
                        if isinstance(result, bytes):
                            return result
                        url = result
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise _failure(f"The download took longer than {total:g} seconds.") from None
        raise _failure(f"More than {self._settings.max_redirects} redirects.")

    async def _hop(
        self, client: httpx.AsyncClient, url: httpx.URL, max_bytes: int
    ) -> bytes | httpx.URL:
        """One request: the body, or where the server redirects to."""
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        literal = literal_ip(host)
        addresses = [literal] if literal is not None else await self._resolver.resolve(host, port)
        self._policy.check(host, addresses)
        token = _PIN.set(_Pin(host, port, tuple(addresses)))
        floor = _RateFloor(self._settings.min_rate, self._settings.min_rate_grace_s)
        try:
            async with floor.timeout, client.stream("GET", url) as response:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    return _redirect_target(url, response.headers["location"])
                if response.status_code >= 300:
                    raise _failure(f"The server answered HTTP {response.status_code}.")
                return await _read_body(response, max_bytes, floor)
        except InvalidMedia:
            raise
        except Exception as exc:
            if floor.timeout.expired():
                raise _failure(floor.message()) from None
            raise _failure(_explain(exc, host, self._settings)) from exc
        finally:
            _PIN.reset(token)


def _redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    try:
        target = url.join(location)
    except (httpx.InvalidURL, ValueError, TypeError):
        target = None
    if target is None or not _fetchable(target):
        raise _failure("The server redirected to an unsupported URL.")
    return target


async def _read_body(response: httpx.Response, max_bytes: int, floor: _RateFloor) -> bytes:
    """The body, refused the moment it would pass ``max_bytes``; gzip is inflated within the cap.
    ``floor`` is told of every byte that arrives."""
    length = response.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > max_bytes:
        raise _too_large(max_bytes)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
        raise _failure(f"The server sent the file encoded as {encoding}, which is not supported.")
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding not in ("identity", "") else None
    body = io.BytesIO()
    try:
        async for chunk in response.aiter_raw():
            floor.got(len(chunk))
            if inflate is not None:
                chunk = inflate.decompress(chunk, max_bytes - body.tell() + 1)
            if body.tell() + len(chunk) > max_bytes:
                raise _too_large(max_bytes)
            body.write(chunk)
        if inflate is not None:
            tail = inflate.flush()
            if body.tell() + len(tail) > max_bytes:
                raise _too_large(max_bytes)
            body.write(tail)
    except zlib.error as exc:
        raise _failure("The server sent a corrupt compressed file.") from exc
    return body.getvalue()  # no copy: BytesIO hands over its buffer


def _explain(exc: BaseException, host: str, settings: MediaSettings) -> str:
    """What a transport error means to the person who sent the URL."""
    if isinstance(exc, (httpcore.ReadTimeout, httpx.ReadTimeout)):
        return f"The server sent nothing for {settings.read_timeout_s:g} seconds."
    if isinstance(exc, (httpcore.ConnectTimeout, httpx.ConnectTimeout)):
        return f"Could not connect to {host}."
    if isinstance(exc, (httpcore.ConnectError, httpx.ConnectError)):
        if _caused_by(exc, ssl.SSLCertVerificationError):
            return f"The certificate of {host} could not be verified."
        return f"Could not connect to {host}."
    if isinstance(exc, (httpcore.TimeoutException, httpx.TimeoutException)):
        return f"The server {host} did not answer in time."
    return f"The connection to {host} failed."


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is in the chain of causes (httpcore and anyio each wrap ssl errors)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, kind):
            return seen is not None
        seen = seen.__cause__ or seen.__context__
    return False
