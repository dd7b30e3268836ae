"""Start and stop: check the settings, load the model once, bind the port (a busy port is a
one-line error), serve with uvicorn until Ctrl-C or SIGTERM (requests in flight finish first)."""

from __future__ import annotations

import signal
import socket
import sys
from dataclasses import replace

import uvicorn

from .app import create_app
from .settings import Settings, settings_from
from .weights import Catalog
from .worker import Worker

GRACE_SECONDS = 30  # how long requests in flight may take to finish on shutdown


class _Server(uvicorn.Server):
    """uvicorn's server, saying once where it serves when it is ready."""

    def __init__(self, config, ready_line: str):
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if not self.should_exit:
            print(self.ready_line, file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port") from None
    sock.set_inheritable(True)
    return sock


def ready_line(settings: Settings, model: str, device) -> str:
    """Where the server answers: an address to open (on 0.0.0.0 or ::, this machine's loopback one, and
    how other machines reach it)."""
    line = f"birefnet: serving {model} on {device} at {settings.local_url}"
    line += " (token required)" if settings.token else ""
    if settings.all_addresses:
        line += (
            f"; other machines use this machine's name or address, e.g. http://{socket.gethostname()}:"
            f"{settings.port}, with the token"
        )
    return line


def serve(args) -> int:
    settings = settings_from(args)
    catalog = Catalog(settings.allowed_weights)
    sock = bind(settings.host, settings.port)  # a busy port fails before the model loads
    settings = replace(settings, port=sock.getsockname()[1])  # --port 0: the free port the system chose
    worker = Worker(settings.weights, settings.device, settings.dtype, catalog, settings.max_queue, settings.backend)
    config = uvicorn.Config(
        create_app(settings, worker), log_level="warning", access_log=False, timeout_graceful_shutdown=GRACE_SECONDS
    )
    model = f"{worker.name} ({worker.model.info.config.backbone})"
    where = f"{worker.device} (OpenVINO)" if settings.backend == "openvino" else worker.device
    server = _Server(config, ready_line(settings, model, where))
    # uvicorn stops gracefully on SIGTERM, then sends it again to the old handler: ignore that echo so the
    # process ends normally (exit 0, "server stopped")
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        worker.close()
        print("birefnet: server stopped", file=sys.stderr, flush=True)
    return 0
