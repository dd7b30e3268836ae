"""The segment routes' gate, before FastAPI reads their form: a full line and a form cut short answered
without reading (or spooling) the upload."""

from __future__ import annotations

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from .worker import Worker

SEGMENT_PATHS = ("/v1/segment", "/api/remove")  # the routes that take an upload and a place in the line


class SegmentGate:
    """Pure ASGI, in front of the segment routes, whose form FastAPI reads whole (the upload spooled to disk)
    before the route runs: a full line answers its 503 before a byte of the upload is read (uvicorn then
    discards the body it is sent and keeps the connection; curl, which waits for `100 Continue` before a
    large body, sends none), and a form that ends before its closing boundary gets a 400 saying so:
    python-multipart takes such a body as complete and drops its unfinished last part, so a request cut
    short, or written by hand without the last line, was told its image was missing."""

    def __init__(self, app, worker: Worker):
        self.app, self.worker = app, worker

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in SEGMENT_PATHS:
            return await self.app(scope, receive, send)
        refusal = self.worker.refusal()
        if refusal is not None:
            response = JSONResponse({"error": refusal.message}, status_code=refusal.status, headers=refusal.headers)
            return await response(scope, receive, send)
        kind, options = parse_options_header(Headers(scope=scope).get("content-type", ""))
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            return await self.app(scope, receive, send)
        await self.app(scope, ClosingBoundary(receive, boundary), send)


class ClosingBoundary:
    """`receive` of a multipart request, raising a 400 when the body ends before the form's closing delimiter
    (CRLF--BOUNDARY--, where python-multipart ends the form too; a form may begin with it, hence the CRLF
    counted before the body). An empty body is left to the route (no form: the image is missing)."""

    def __init__(self, receive, boundary: bytes):
        self.receive, self.closing = receive, b"\r\n--" + boundary + b"--"
        self.tail, self.found, self.received = b"\r\n", False, 0

    async def __call__(self):
        message = await self.receive()
        if message["type"] != "http.request" or self.found:
            return message
        body, keep = message.get("body", b""), len(self.closing) - 1
        self.received += len(body)
        # the delimiter within this chunk, or begun in the one before
        self.found = self.closing in body or self.closing in self.tail + body[: len(self.closing)]
        self.tail = (self.tail + body[-keep:])[-keep:]
        if not self.found and not message.get("more_body", False) and self.received:
            mark = self.closing[2:].decode("latin-1")
            raise HTTPException(
                400,
                f"the form ends before its closing boundary {mark}: the request was cut short, or its client "
                f"left out that last line; send the whole form, ending with {mark}",
            )
        return message
