"""Optional dependencies: imported only by the feature that needs them, named in one line when missing."""

from __future__ import annotations

import functools
import importlib
import sys

# OpenVINO's converter modules that hold its usage-reporting client as the module name `tm`.
_OPENVINO_REPORTERS = (
    "openvino.tools.ovc.convert_impl",
    "openvino.tools.ovc.telemetry_utils",
    "openvino.tools.ovc.utils",
    "openvino.tools.ovc.main",
)


def require(module: str, extra: str):
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"{module} is not installed; install the extra: pip install 'birefnet-toolkit[{extra}]'"
        ) from None


def import_openvino():
    """OpenVINO, with its usage reports to Google Analytics off: unless a user has opted out, it reports its
    import and every conversion, each from a process it forks out of a worker thread (a hazard in a
    process with other threads: a server, ComfyUI, a test runner). A local tool sends nothing.

    Imported here first, OpenVINO finds no telemetry package and uses its own no-op client; imported
    earlier by other code, its converter's modules get that client from now on."""
    first = "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules
    if first:
        sys.modules["openvino_telemetry"] = None  # its import fails: OpenVINO falls back to its stub
    try:
        openvino = require("openvino", "openvino")
    finally:
        if first:
            del sys.modules["openvino_telemetry"]  # others may import it as usual
    stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    for name in _OPENVINO_REPORTERS:
        if hasattr(sys.modules.get(name), "tm"):
            sys.modules[name].tm = stub
    return openvino


@functools.cache
def openvino_core():
    """The process's one OpenVINO Core, kept until exit: every OpenVINO runtime in the toolkit compiles with it.

    Each Core's CPU plugin gives the thread that first uses it a signal stack of its own and frees that stack
    when the Core goes, putting back the one it found only if its own is still in place. Cores freed in
    another order than made (models dropped by a node or the garbage collector) left the thread with a
    freed signal stack, and the next signal Python handles there (Ctrl+C; SIGCHLD once a DataLoader has run)
    killed the process at once: SIGSEGV, no traceback. One Core that lives as long as the process never
    frees its stack under anyone."""
    return import_openvino().Core()
