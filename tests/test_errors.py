"""The error tree: each class's status, code, type and message, verbatim from the reference."""

from __future__ import annotations

import pytest

from omniserve.errors import (
    ApiError,
    EngineBusy,
    HttpError,
    InternalError,
    InvalidApiKey,
    InvalidMedia,
    InvalidParameter,
    MediaNotEnabled,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    OmniserveError,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    StartupError,
    StreamRequired,
)

BAD_PARAM = ("invalid_parameter_error", "invalid_request_error")
RATE_LIMIT_MESSAGE = (
    "You have exceeded your current request limit. For details, see: "
    "https://help.aliyun.com/zh/model-studio/error-code#rate-limit"
)


def kind(err: ApiError) -> tuple[int, str, str]:
    return err.status, err.code, err.type


def test_api_error_defaults() -> None:
    err = ApiError("boom")
    assert kind(err) == (500, "InternalError", "internal_error")
    assert err.message == "boom"
    assert str(err) == "boom"
    assert err.param is None
    assert err.headers() == {}
    assert repr(err) == "ApiError(500, 'InternalError', 'boom')"


def test_body_has_the_envelope_keys_in_order() -> None:
    err = InvalidParameter("Range of n should be [1, 1]", param="n")
    body = err.body()
    assert list(body) == ["code", "param", "message", "type"]
    assert body == {
        "code": "invalid_parameter_error",
        "param": "n",
        "message": "Range of n should be [1, 1]",
        "type": "invalid_request_error",
    }


def test_invalid_parameter() -> None:
    err = InvalidParameter("x")
    assert kind(err) == (400, *BAD_PARAM)
    assert isinstance(err, ApiError)


def test_stream_required_text() -> None:
    err = StreamRequired(audio_requested=False)
    assert kind(err) == (400, *BAD_PARAM)
    # The vendor's message ends with a space.
    assert err.message == (
        "This model only support stream mode, please enable the stream parameter to access the "
        "model. "
    )
    assert err.message.endswith(". ")
    assert err.param == "stream"
    assert isinstance(err, InvalidParameter)


def test_stream_required_audio() -> None:
    err = StreamRequired(audio_requested=True)
    assert kind(err) == (400, *BAD_PARAM)
    assert err.message == "'audio' output only support with stream=true"
    assert err.param == "stream"


@pytest.mark.parametrize("cls", [InvalidMedia, MediaNotEnabled])
def test_media_errors_are_bad_parameters(cls: type[InvalidParameter]) -> None:
    err = cls("The audio is empty")
    assert kind(err) == (400, *BAD_PARAM)
    assert err.message == "The audio is empty"
    assert isinstance(err, InvalidParameter)
    assert err.headers() == {}


def test_payload_too_large() -> None:
    err = PayloadTooLarge(1024)
    assert kind(err) == (413, *BAD_PARAM)
    assert err.message == "Request body is larger than the server's limit of 1024 bytes."


def test_invalid_api_key() -> None:
    err = InvalidApiKey()
    assert kind(err) == (401, "invalid_api_key", "invalid_request_error")
    assert err.message == (
        "Incorrect API key provided. For details, see: "
        "https://help.aliyun.com/zh/model-studio/error-code#apikey-error"
    )
    assert err.param is None


def test_model_not_found() -> None:
    err = ModelNotFound("qwen-omni-plus")
    assert kind(err) == (404, "model_not_found", "invalid_request_error")
    assert err.message == "The model qwen-omni-plus does not exist or you do not have access to it."
    assert err.param == "model"


def test_not_found_and_method_not_allowed() -> None:
    assert kind(NotFound("The path /x does not exist.")) == (
        404,
        "NotFound",
        "invalid_request_error",
    )
    assert kind(MethodNotAllowed("no")) == (405, "MethodNotAllowed", "invalid_request_error")


def test_rate_limited() -> None:
    err = RateLimited(retry_after=3)
    assert kind(err) == (429, "limit_requests", "limit_requests")
    assert err.message == RATE_LIMIT_MESSAGE
    assert err.retry_after == 3
    assert err.headers() == {"Retry-After": "3"}


def test_engine_busy_reads_as_a_rate_limit() -> None:
    err = EngineBusy()
    assert kind(err) == (429, "limit_requests", "limit_requests")
    assert err.message == RATE_LIMIT_MESSAGE
    assert err.headers() == {"Retry-After": "1"}
    assert EngineBusy(retry_after=4.2).headers() == {"Retry-After": "5"}


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (0, "1"),
        (-5, "1"),
        (0.001, "1"),
        (0.5, "1"),
        (1, "1"),
        (1.0001, "2"),
        (2.5, "3"),
        (59.01, "60"),
        (60, "60"),
    ],
)
def test_retry_after_rounds_up_to_at_least_one(seconds: float, header: str) -> None:
    assert RateLimited(retry_after=seconds).headers() == {"Retry-After": header}


def test_service_unavailable() -> None:
    err = ServiceUnavailable("The engine is starting.")
    assert kind(err) == (503, "ServiceUnavailable", "service_unavailable")
    assert err.message == "The engine is starting."


def test_internal_error() -> None:
    err = InternalError()
    assert kind(err) == (500, "InternalError", "internal_error")
    # The vendor's spelling ("occured") is kept.
    assert err.message == (
        "An internal error has occured, try again later or contact service support."
    )
    assert InternalError("The engine ended the stream.").message == "The engine ended the stream."


@pytest.mark.parametrize(
    "err",
    [
        InvalidParameter("x"),
        StreamRequired(audio_requested=False),
        InvalidApiKey(),
        ModelNotFound("m"),
        NotFound("x"),
        MethodNotAllowed("x"),
        ServiceUnavailable("x"),
        InternalError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_only_429s_carry_headers(err: ApiError) -> None:
    assert err.headers() == {}


def test_every_error_is_an_exception_of_the_tree() -> None:
    with pytest.raises(ApiError):
        raise RateLimited(retry_after=1)
    assert issubclass(StreamRequired, InvalidParameter)
    assert issubclass(PayloadTooLarge, InvalidParameter)
    assert not issubclass(ModelNotFound, InvalidParameter)
    assert issubclass(ApiError, OmniserveError) and issubclass(StartupError, OmniserveError)
    assert not issubclass(StartupError, ApiError)


def test_http_error_keeps_the_framework_status() -> None:
    err = HttpError(400, "There was an error parsing the body")
    assert kind(err) == (400, "InternalError", "internal_error")
    assert err.message == "There was an error parsing the body"
    assert HttpError.status == 500  # set on the instance, never on the class


def test_a_framework_http_error_leaves_in_the_envelope() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from starlette.exceptions import HTTPException

    from omniserve.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(418, "I'm a teapot")

    r = TestClient(app).get("/teapot")
    assert r.status_code == 418
    assert r.json()["error"] == {
        "code": "InternalError",
        "param": None,
        "message": "I'm a teapot",
        "type": "internal_error",
    }
    assert ApiError.status == 500
