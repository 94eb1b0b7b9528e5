"""Every error omniserve raises on purpose, as one tree.

    OmniserveError                  the root of every error omniserve raises on purpose
    ├── ApiError                    an answer to a client: status, code, type, message, param
    │   ├── InvalidParameter        400 invalid_parameter_error / invalid_request_error
    │   │   ├── StreamRequired      400 stream must be true
    │   │   ├── InvalidMedia        400 media that breaks a rule of the spec
    │   │   ├── MediaNotEnabled     400 media input switched off on this server
    │   │   ├── BadFraming          400 Content-Length with Transfer-Encoding (or two lengths)
    │   │   ├── PayloadTooLarge     413 a body over the server's limit
    │   │   └── NotJson             415 a POST body that does not say it is application/json
    │   ├── InvalidApiKey           401 invalid_api_key (wrong or revoked key)
    │   │   ├── MissingApiKey       401 no Authorization header
    │   │   └── MalformedApiKey     401 an Authorization header that is not ``Bearer <key>``
    │   ├── AccessDenied            403 AccessDenied: an admin route asked without an admin key
    │   ├── HostNotAllowed          403 AccessDenied: a keyless server asked under a foreign name
    │   ├── FreeQuotaExhausted      403 AllocationQuota.FreeTierOnly: the token quota is used up
    │   ├── ModelNotFound           404 model_not_found
    │   ├── NotFound                404 NotFound: a path that is not part of the API
    │   ├── MethodNotAllowed        405 MethodNotAllowed
    │   ├── BodyTooSlow             408 RequestTimeOut: a request body that does not arrive in time
    │   ├── RateLimited             429 limit_requests (carries Retry-After)
    │   ├── TokenRateLimited        429 insufficient_quota: tokens per minute (Retry-After)
    │   ├── EngineBusy              429 limit_requests: an engine queue is full (Retry-After)
    │   ├── TooManySessions         429 limit_requests: a key's realtime sessions (Retry-After)
    │   ├── RequestTimedOut         500 RequestTimeOut: the engine went silent
    │   ├── InternalError           500 InternalError: a fault of ours; the message hides details
    │   ├── HttpError               its status, InternalError: the web framework's other errors
    │   ├── ServiceUnavailable      503 ServiceUnavailable: the engine cannot serve now
    │   │   └── EngineOutOfMemory   503 the GPU ran out of memory on this request
    │   │                               (engines/hf/engine.py)
    │   └── VendorError             status, code and type set per instance (Retry-After given)
    │       ├── InjectedError       a fault a rule or X-Omniserve-Fault asked for (scenarios.py)
    │       └── UpstreamError       an upstream's error (engines/upstream/errors.py)
    │           ├── UpstreamBroken  503 ServiceUnavailable: unreachable, or its stream broke
    │           └── UpstreamBusy    503 ServiceUnavailable: every connection to it is busy
    └── StartupError                the server cannot start or serve as configured (operator)
        ├── CheckpointError         open weights that cannot be served as configured
        │                               (engines/hf/checkpoint.py)
        ├── DatabaseError           the accounts database cannot be used (accounts/database.py)
        ├── SpeechError             espeak-ng missing, failing or silent (speech/synth.py)
        ├── TokenizerUnavailable    the Qwen BPE ranks file cannot be read (tokens.py)
        └── UpstreamConfigError     upstreams configured in a way that cannot work
                                        (engines/upstream/engine.py)

An ``ApiError`` is for a client: the API turns any of them into the DashScope envelope in one
place (``api/errors.py``), with ``ApiError.body()`` as its inner ``error`` object and
``ApiError.headers()`` (``Retry-After``) added to the response; messages are verbatim from the
vendor where the vendor's are known. A ``StartupError`` is for the operator: ``omniserve
serve`` prints its message as one line and exits with status 1. ``tests/test_error_tree.py``
checks that this tree lists every subclass of ``OmniserveError``, under its real parent.
"""

from __future__ import annotations

import math
from typing import Any

# The keys of an error object, in the vendor's order: in an HTTP error body, in an SSE event.
HTTP_ERROR_ORDER = ("code", "param", "message", "type")
SSE_ERROR_ORDER = ("message", "type", "param", "code")


class OmniserveError(Exception):
    """The root of every error omniserve raises on purpose (the tree is in the module doc)."""


class StartupError(OmniserveError):
    """The server cannot start or serve as configured: the message is for the operator, not a
    client, and says what to change."""


class ApiError(OmniserveError):
    """An error with everything the wire format needs."""

    status: int = 500
    code: str = "InternalError"
    type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}

    def body(self, order: tuple[str, ...] = HTTP_ERROR_ORDER) -> dict[str, Any]:
        """The inner ``error`` object of the envelope, its keys in ``order`` (the vendor orders
        them one way in an HTTP error and another in a stream's error event)."""
        fields = {
            "code": self.code,
            "param": self.param,
            "message": self.message,
            "type": self.type,
        }
        return {key: fields[key] for key in order}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class InvalidParameter(ApiError):
    status = 400
    code = "invalid_parameter_error"
    type = "invalid_request_error"


class StreamRequired(InvalidParameter):
    """Qwen-Omni is stream-only."""

    TEXT = (
        "This model only support stream mode, please enable the stream parameter "
        "to access the model. "
    )
    AUDIO = "'audio' output only support with stream=true"

    def __init__(self, *, audio_requested: bool) -> None:
        super().__init__(self.AUDIO if audio_requested else self.TEXT, param="stream")


class InvalidMedia(InvalidParameter):
    """A media part that is malformed or outside the model's limits."""


class MediaNotEnabled(InvalidParameter):
    """Media parts are understood but this server does not accept them."""


class PayloadTooLarge(InvalidParameter):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the server's limit of {limit} bytes.")


class BadFraming(InvalidParameter):
    """Content-Length and Transfer-Encoding together (or two lengths): where the body ends is
    ambiguous, the classic way to smuggle a second request past a proxy (RFC 9112 §6.1)."""

    def __init__(self) -> None:
        super().__init__(
            "The request has both Content-Length and Transfer-Encoding (or two different "
            "Content-Length headers); send one."
        )


class NotJson(InvalidParameter):
    """A POST body must say it is JSON: a cross-site form or script can only send the types
    that need no CORS preflight (text/plain, forms)."""

    status = 415

    def __init__(self, content_type: str | None) -> None:
        got = f"'{content_type}'" if content_type else "none"
        super().__init__(
            f"Content-Type must be application/json (got {got}).", param="Content-Type"
        )


class NotFound(ApiError):
    """A path that is not part of the API."""

    status = 404
    code = "NotFound"
    type = "invalid_request_error"


class MethodNotAllowed(ApiError):
    status = 405
    code = "MethodNotAllowed"
    type = "invalid_request_error"


class InvalidApiKey(ApiError):
    status = 401
    code = "invalid_api_key"
    type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__(
            "Incorrect API key provided. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#apikey-error"
        )


class MissingApiKey(InvalidApiKey):
    def __init__(self) -> None:
        ApiError.__init__(
            self,
            "No API key provided. Send it as 'Authorization: Bearer sk-...'. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#apikey-error",
        )


class MalformedApiKey(InvalidApiKey):
    def __init__(self) -> None:
        ApiError.__init__(
            self,
            "Malformed Authorization header: expected 'Bearer sk-...'. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#apikey-error",
        )


class AccessDenied(ApiError):
    status = 403
    code = "AccessDenied"
    type = "access_denied"

    def __init__(self, message: str = "Access denied: this route needs an admin API key.") -> None:
        super().__init__(message)


class HostNotAllowed(ApiError):
    """A keyless server answers only to names that cannot be pointed at it by someone else
    (DNS rebinding): loopback names, IP addresses, and its ``allowed_hosts``."""

    status = 403
    code = "AccessDenied"
    type = "invalid_request_error"

    def __init__(self, host: str) -> None:
        super().__init__(
            f"This server has no API keys and answers only to localhost, IP addresses and its "
            f"allowed_hosts, not to '{host}'. Add the name to http.allowed_hosts, or create a key."
        )


class BodyTooSlow(ApiError):
    status = 408
    code = "RequestTimeOut"
    type = "request_timeout"

    def __init__(self, rate: float, grace: float) -> None:
        super().__init__(
            f"The request body arrived slower than {rate:.0f} bytes per second after the first "
            f"{grace:.0f} s; send it faster (http.body_min_rate)."
        )


class FreeQuotaExhausted(ApiError):
    """The vendor's answer when a free quota is used up and paid use is off."""

    status = 403
    code = "AllocationQuota.FreeTierOnly"
    type = "AllocationQuota.FreeTierOnly"

    def __init__(self) -> None:
        super().__init__(
            "The free tier of the model has been exhausted. If you wish to continue access the "
            'model on a paid basis, please disable the "use free tier only" mode in the '
            "management console."
        )


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"
    type = "invalid_request_error"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The model {name} does not exist or you do not have access to it.", param="model"
        )


class _RetryAfter(ApiError):
    status = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class RateLimited(_RetryAfter):
    code = "limit_requests"
    type = "limit_requests"

    def __init__(self, *, retry_after: float) -> None:
        super().__init__(
            "You have exceeded your current request limit. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#rate-limit",
            retry_after=retry_after,
        )


class TokenRateLimited(_RetryAfter):
    """Tokens per minute used up: the vendor's code and message for TPM."""

    code = "insufficient_quota"
    type = "insufficient_quota"

    def __init__(self, *, retry_after: float) -> None:
        super().__init__(
            "Allocated quota exceeded, please increase your quota limit.",
            retry_after=retry_after,
        )


class TooManySessions(_RetryAfter):
    """A key holds as many realtime sessions open as it may: the rate limit's code."""

    code = "limit_requests"
    type = "limit_requests"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This API key may hold {limit} realtime session{'s' if limit != 1 else ''} open "
            "at once; close one first. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#rate-limit",
            retry_after=5.0,
        )


class EngineBusy(_RetryAfter):
    """The engine's queue is full: the same code and message as a rate limit."""

    code = "limit_requests"
    type = "limit_requests"

    def __init__(self, *, retry_after: float = 1.0) -> None:
        super().__init__(
            "You have exceeded your current request limit. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#rate-limit",
            retry_after=retry_after,
        )


class ServiceUnavailable(ApiError):
    status = 503
    code = "ServiceUnavailable"
    type = "service_unavailable"


class RequestTimedOut(ApiError):
    """The engine went silent: no first event, or no next one, in time (the vendor answers
    its own timeouts with 500 RequestTimeOut)."""

    status = 500
    code = "RequestTimeOut"
    type = "request_timeout"


class HttpError(ApiError):
    """An HTTP error the web framework raised itself, other than 404 and 405: its status and
    detail, in the envelope of the others."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class VendorError(ApiError):
    """An error whose status, code and type are set per instance: another server's answer, or
    one of the vendor's errors asked for on purpose; ``retry_after`` adds ``Retry-After``."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        type: str,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status, self.code, self.type = status, code, type
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InternalError(ApiError):
    status = 500
    code = "InternalError"
    type = "internal_error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message or "An internal error has occured, try again later or contact service support."
        )
