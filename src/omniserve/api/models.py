"""``GET .../models``: the served catalog, in the OpenAI list format."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from omniserve.accounts.auth import Caller
from omniserve.api.auth import guard
from omniserve.api.errors import error_response
from omniserve.catalog import ModelSpec, Voice
from omniserve.errors import ModelNotFound
from omniserve.service import ChatService

router = APIRouter()
KEY = Depends(guard("key"))


def model_object(model: ModelSpec, created: int, service: ChatService) -> dict[str, Any]:
    limits = model.limits
    return {
        "id": model.name,
        "object": "model",
        "created": created,
        "owned_by": "omniserve",
        # Extensions a client may read; OpenAI SDKs ignore them.
        "family": model.family,
        "version": model.version,
        "snapshot": model.snapshot,
        "context_length": limits.context,
        "max_input_tokens": limits.max_input,
        "max_output_tokens": limits.max_output,
        "thinking": model.supports_thinking,
        "audio_output": model.audio_output,
        "voices": list(model.voice_names),
        "default_voice": model.default_voice if model.audio_output else None,
        "output_languages": [str(lang) for lang in model.output_languages],
        "voice_details": [voice_object(v, service) for v in model.voices],
        "speech": service.speech() if model.audio_output else None,
        "media_limits": media_object(model),
    }


def voice_object(voice: Voice, service: ChatService) -> dict[str, Any]:
    """A voice as a picker shows it: who it is, what it speaks, and with which neural voice
    (by language, where one reads it)."""
    return {
        "name": voice.name,
        "display_name": voice.display_name,
        "description": voice.description,
        "gender": voice.gender,
        "languages": [str(lang) for lang in voice.languages],
        "dialect": voice.dialect,
        "neural_voices": service.neural_voices(voice),
    }


def media_object(model: ModelSpec) -> dict[str, Any]:
    """The input limits a client can check before it uploads (the server checks them again)."""
    media = model.media
    return {
        "data_uri_max_bytes": media.data_uri_max_bytes,
        "image_max_bytes": media.image_max_bytes,
        "audio_max_bytes": media.audio_max_bytes,
        "audio_max_seconds": media.audio_max_seconds,
        "video_max_bytes": media.video_max_bytes,
        "video_max_seconds": media.video_max_seconds,
        "frames_min": media.frames_min,
        "frames_max": media.frames_max,
        "audio_per_request": media.audio_per_request,
        "video_per_request": media.video_per_request,
    }


async def list_models(request: Request, caller: Caller = KEY) -> Response:
    """The served models this caller's key may use."""
    service: ChatService = request.app.state.service
    created: int = request.app.state.started_at
    data = [model_object(m, created, service) for m in service.models() if caller.may_use(m.name)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request, model_id: str, caller: Caller = KEY) -> Response:
    service: ChatService = request.app.state.service
    if model_id not in service.catalog or not caller.may_use(model_id):
        return error_response(ModelNotFound(model_id))
    model = service.catalog.get(model_id)
    return JSONResponse(model_object(model, request.app.state.started_at, service))


for prefix in ("/compatible-mode/v1", "/v1"):
    router.add_api_route(
        f"{prefix}/models",
        list_models,
        methods=["GET"],
        include_in_schema=prefix == "/v1",
        summary="List served models",
    )
    router.add_api_route(
        f"{prefix}/models/{{model_id}}",
        get_model,
        methods=["GET"],
        include_in_schema=prefix == "/v1",
        summary="Describe one model",
    )
