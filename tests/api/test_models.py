"""``GET .../models``: the catalog as the OpenAI SDK lists it."""

from __future__ import annotations

import httpx
from openai import OpenAI

from helpers import LiveServer
from omniserve.catalog import Catalog


def test_both_prefixes_list_every_model(server: LiveServer) -> None:
    names = Catalog.default().names()
    for prefix in ("/compatible-mode/v1", "/v1"):
        body = httpx.get(f"{server.base_url}{prefix}/models").json()
        assert body["object"] == "list"
        assert [m["id"] for m in body["data"]] == names
        for m in body["data"]:
            assert m["object"] == "model" and m["owned_by"] == "omniserve"
            assert isinstance(m["created"], int)


def test_openai_sdk_lists_and_retrieves(server: LiveServer) -> None:
    client = OpenAI(api_key="sk-test", base_url=server.api)
    ids = [m.id for m in client.models.list()]
    assert "qwen3-omni-flash" in ids and "qwen2.5-omni-7b" in ids
    turbo = client.models.retrieve("qwen-omni-turbo")
    extra = turbo.model_extra or {}
    assert extra["max_output_tokens"] == 2048
    assert extra["voices"] == ["Cherry", "Serena", "Ethan", "Chelsie"]
    assert extra["thinking"] is False


def test_unknown_model_is_a_404_envelope(server: LiveServer) -> None:
    r = httpx.get(f"{server.api}/models/gpt-4o")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found"
    assert err["message"] == "The model gpt-4o does not exist or you do not have access to it."


def test_health_and_readiness(server: LiveServer) -> None:
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/readyz").json() == {
        "status": "ready",
        "engine": "emulator",
    }
