"""A local HTTP server that speaks the Hugging Face Hub's file protocol, for download tests.

The real Hub cannot be reached from the test machines; `huggingface_hub` itself runs unchanged
against this server (`HF_ENDPOINT`): `HEAD`/`GET /{repo}/resolve/{revision}/{filename}` with the
`X-Repo-Commit` and `ETag` headers and byte ranges (resumed downloads). Gated repositories
answer 401 with the Hub's `X-Error-Code: GatedRepo`.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self):
        self.files: dict[tuple[str, str], Path] = {}
        self.gated: set[str] = set()
        self.requests: list[str] = []
        self.chunk_delay = 0.0  # seconds per MiB sent: a slow connection, for cancelling a download
        self.sent = 0  # body bytes sent, over all requests
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                hub.requests.append(f"{self.command} {self.path}")
                match = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                path = hub.files.get((match.group(1), match.group(3))) if match else None
                if match and match.group(1) in hub.gated:
                    self.send_response(401)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to this model is restricted")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = 0
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if ranged and body:
                    start = int(ranged.group(1))
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    self._send(data[start:])

            def _send(self, data: bytes):
                step = 1 << 20
                try:
                    for at in range(0, len(data), step):
                        self.wfile.write(data[at : at + step])
                        hub.sent += len(data[at : at + step])
                        time.sleep(hub.chunk_delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a cancelled download)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
