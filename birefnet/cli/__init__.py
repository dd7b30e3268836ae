"""`birefnet` command line: segment images into mask PNGs (and RGBA cut-outs), inspect weights,
list and download the known checkpoints, export to ONNX / OpenVINO, serve, build the Krita plug-in.
One module per command (`segment`, `segment_video`, `commands`); the flags they share in `flags`."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import CheckpointError, OutOfMemory
from ..version import __version__
from . import commands, segment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birefnet",
        description="Cut objects out of images with BiRefNet: masks and cut-outs of images and clips, the "
        "known checkpoints, deployment exports, a local server and the Krita plug-in.",
    )
    parser.add_argument("--version", action="version", version=f"birefnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    segment.add_parser(sub)
    commands.add_parsers(sub)
    return parser


def os_error_line(err: OSError) -> str:
    """`/sys/x: Permission denied` rather than `[Errno 13] Permission denied: '/sys/x'`."""
    if err.filename is None or err.strerror is None:
        return str(err)
    return f"{err.filename}: {err.strerror}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (tests and embedding programs replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def show_library_messages(quiet: bool) -> None:
    """The library's log lines on stderr as "birefnet: ..." (info too, e.g. a CUDA graph's capture time,
    the first call's cost; warnings only with --quiet), set up once per process."""
    logger = logging.getLogger("birefnet")
    if not any(getattr(handler, "birefnet_cli", False) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("birefnet: %(message)s"))
        handler.birefnet_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def joined_negative_values(argv: list[str]) -> list[str]:
    """`--box -3,10,50,40` as `--box=-3,10,50,40`: argparse takes a value starting with '-' for an option
    (a box reaching over the left or top edge starts at a negative x or y)."""
    out = []
    for arg in argv:
        if out and out[-1] == "--box" and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"--box={arg}"
        else:
            out.append(arg)
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(joined_negative_values(sys.argv[1:] if argv is None else list(map(str, argv))))
    show_library_messages(getattr(args, "quiet", False))
    return run_command("birefnet", args)


def run_command(program: str, args) -> int:
    """`args.func(args)`'s exit status; what the user can act on ends it with one line `program: ...`
    instead of a traceback: a bad input or setting (2), out of memory (1), a folder that cannot be
    created or written or a full disk (2), Ctrl-C (130, the shell's code for it)."""
    try:
        return args.func(args)
    except (CheckpointError, ValueError, FileExistsError) as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 2
    except OutOfMemory as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{program}: {os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
