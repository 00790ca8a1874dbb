"""Request body size limits, enforced before the body is parsed."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import APIError, error_body


class BodyLimitMiddleware:
    """Refuse bodies over the limit: by Content-Length up front, or while streaming in."""

    def __init__(self, app: ASGIApp, *, default_bytes: int, upload_bytes: int, upload_path: str) -> None:
        self.app = app
        self.default_bytes = default_bytes
        self.upload_bytes = upload_bytes
        self.upload_path = upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope.get("path") == self.upload_path
        # Multipart framing adds a little on top of the files themselves.
        limit = self.upload_bytes + 64 * 1024 if is_upload else self.default_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = JSONResponse(
                error_body(
                    f"request body is {int(declared)} bytes; the limit is {limit}",
                    "invalid_request_error",
                    "files" if is_upload else None,
                    "too_large",
                ),
                status_code=413,
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="too_large")
            return message

        await self.app(scope, limited_receive, send)
