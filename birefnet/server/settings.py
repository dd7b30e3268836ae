"""What the server was asked to do, checked once at start: a non-loopback address needs
--allow-remote and a token, so nothing is exposed to the network by accident."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_VARIABLE = "BIREFNET_SERVER_TOKEN"


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7853
    token: str | None = None
    cors: tuple[str, ...] = ()  # origins whose web pages may call the server
    max_upload_bytes: int = 100 * 2**20
    max_pixels: int = 100_000_000
    max_queue: int = 64
    weights: str | None = None  # the default model (None: $BIREFNET_WEIGHTS or the demo model)
    allowed_weights: tuple[str, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "torch"  # or "openvino" (the CPU)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def all_addresses(self) -> bool:
        """Listening on every address of the machine (0.0.0.0, ::): no address a browser can open."""
        return self.host in ("", "0.0.0.0", "::")

    @property
    def local_url(self) -> str:
        """The address to open on this machine: the loopback address when listening on all of them."""
        if self.all_addresses:
            return f"http://{'[::1]' if ':' in self.host else '127.0.0.1'}:{self.port}"
        return self.url

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def settings_from(args) -> Settings:
    """Settings from the `serve` arguments; ValueError (one line) for an unsafe or impossible setup."""
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise ValueError(
                f"--host {args.host} would let other machines use the server; add --allow-remote "
                f"and a token (--token or ${TOKEN_VARIABLE}), or keep the default 127.0.0.1"
            )
        if not token:
            raise ValueError(
                f"--host {args.host} with --allow-remote needs a token (--token or ${TOKEN_VARIABLE}); "
                "clients then send `Authorization: Bearer TOKEN`"
            )
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        raise ValueError("the token must be printable ASCII without spaces (HTTP headers carry only those)")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port {args.port}: use a port from 1 to 65535 (0: any free port)")
    for origin in args.cors:
        if origin != "*" and "://" not in origin:
            raise ValueError(f"--cors {origin}: give an origin such as https://example.com (scheme, host, port)")
    return Settings(
        host=args.host,
        port=args.port,
        token=token,
        cors=tuple(o.rstrip("/") for o in args.cors),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels_in * 1e6),
        max_queue=args.max_queue,
        weights=args.weights,
        allowed_weights=tuple(args.allow_weights),
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
    )
