"""Small helpers shared by the integration tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.integration.conftest import Service


def head_files(directory: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """A saved head folder as multipart ``files`` for httpx."""
    return [("files", (p.name, p.read_bytes())) for p in sorted(directory.iterdir()) if p.is_file()]


def register_head(service: Service, directory: Path, **form: str) -> dict[str, Any]:
    response = service.client.post("/v1/objectives", files=head_files(directory), data=form, headers=service.auth())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def chat(service: Service, key: str | None = None, **body: Any) -> Any:
    payload = {"model": "default", "messages": [{"role": "user", "content": "How do I clean my keyboard?"}]}
    payload.update(body)
    return service.client.post("/v1/chat/completions", json=payload, headers=service.auth(key))


def sse_events(text: str) -> list[Any]:
    """The JSON payloads of an SSE body, and the literal "[DONE]" marker."""
    events: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
