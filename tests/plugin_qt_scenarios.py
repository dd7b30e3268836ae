"""Runs the Krita plug-in's Qt-only modules (`qt`, `pixels`, `client`, `background`) outside Krita, on the
binding Krita 6 embeds (PyQt6), against a live `birefnet serve`: the layer bytes Krita would hand out go
through the plug-in's own PNG encoding (also on its worker thread), request, and decoding, and the
results land in a folder for tests/test_krita_plugin.py to compare with the library's output. Krita 5
(PyQt5) runs the whole plug-in in tests/test_krita_plugin.py; no Krita 6 can be installed here, so this
is its Qt half.

    python plugin_qt_scenarios.py PLUGIN_DIR WORK     (WORK/plan.json in, WORK/results/*.json out)
"""

import json
import sys
import threading
import time
import types
from pathlib import Path

PLUGIN_DIR, WORK = Path(sys.argv[1]), Path(sys.argv[2])
PLAN = json.loads((WORK / "plan.json").read_text())
RESULTS = WORK / "results"

# Krita 6's `pykrita` module names the Qt it was built with; the plug-in's qt.py asks it.
sys.modules["pykrita"] = types.SimpleNamespace(qt_major_version=lambda: 6)
# The package without its __init__ (which registers the actions with the running Krita).
package = types.ModuleType("birefnet_krita")
package.__path__ = [str(PLUGIN_DIR / "birefnet_krita")]
sys.modules["birefnet_krita"] = package

from birefnet_krita import background, client, pixels, qt  # noqa: E402
from PyQt6.QtCore import QEventLoop, QTimer  # noqa: E402
from PyQt6.QtGui import QGuiApplication  # noqa: E402

app = QGuiApplication(["plugin_qt_scenarios"])


def call(server: str, send, cancel_after: float | None = None, timeout: float = 300) -> dict:
    """One ServerCall, waited for in an event loop like Krita's: what it emitted, or nothing if cancelled."""
    result = {}
    loop = QEventLoop()
    server_call = client.ServerCall(server)
    server_call.succeeded.connect(lambda body: (result.update(ok=True, body=bytes(body)), loop.quit()))
    server_call.failed.connect(lambda message: (result.update(ok=False, message=message), loop.quit()))
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    send(server_call)
    if cancel_after is not None:
        QTimer.singleShot(int(cancel_after * 1000), server_call.cancel)
        QTimer.singleShot(int((cancel_after + 2) * 1000), loop.quit)  # then wait to see that nothing comes
    loop.exec()
    return result


def layer(name: str) -> dict:
    spec = PLAN["layers"][name]
    spec["data"] = (WORK / spec["file"]).read_bytes()
    return spec


def segment(server: str, spec: dict, fields: list) -> dict:
    png = pixels.encode_png(pixels.to_bgra8(spec["data"], spec["model"], spec["depth"]), spec["width"], spec["height"])
    return call(server, lambda c: c.segment(png, fields))


def off_the_ui_thread(work) -> dict:
    """`work` through the plug-in's Background runner: where it ran, and what came back on this thread."""
    result = {}
    loop = QEventLoop()

    def run():
        result["worker"] = threading.current_thread() is not threading.main_thread()
        return work()

    def then(value, error):
        result.update(value=value, error=None if error is None else str(error))
        result["delivered_on_ui_thread"] = threading.current_thread() is threading.main_thread()
        loop.quit()

    runner = background.Background()  # kept until its answer came, as the plug-in keeps its one
    runner.run(run, then)
    QTimer.singleShot(60_000, loop.quit)
    loop.exec()
    return result


def record(name: str, **values) -> None:
    (RESULTS / f"{name}.json").write_text(json.dumps(values))


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    server = PLAN["server"]
    modules = {"network": client.QNetworkAccessManager.__module__, "image": pixels.QImage.__module__}
    record("binding", qt_major=qt.QT_MAJOR, **modules)

    health = call(server, lambda c: c.get("/health"))
    record("health", ok=health["ok"], body=json.loads(health["body"]) if health["ok"] else health["message"])

    for name in PLAN["layers"]:
        spec = layer(name)
        answer = segment(server, spec, [("output", "mask")])
        if answer["ok"]:
            (RESULTS / f"{name}.mask").write_bytes(pixels.decode_mask(answer["body"], spec["width"], spec["height"]))
        # what the plug-in writes back into a layer of this colour space (grey keeps one channel, 16 bit doubles it)
        bgra = pixels.to_bgra8(spec["data"], spec["model"], spec["depth"])
        (RESULTS / f"{name}.roundtrip").write_bytes(pixels.from_bgra8(bgra, spec["model"], spec["depth"]))
        record(name, ok=answer["ok"], message=answer.get("message", ""))

    spec = layer(PLAN["cutout_layer"])
    answer = segment(server, spec, [("output", "rgba"), ("box", ",".join(map(str, PLAN["box"])))])
    if answer["ok"]:
        (RESULTS / "cutout.bgra").write_bytes(pixels.decode_bgra(answer["body"], spec["width"], spec["height"]))
    record("cutout", ok=answer["ok"], message=answer.get("message", ""))

    refused = segment(server, spec, [("output", "mask"), ("treshold", "0.5")])  # a misspelt field: 400
    record("bad_field", ok=refused["ok"], message=refused.get("message", ""))
    dead = call(PLAN["dead_server"], lambda c: c.get("/health"), timeout=30)
    record("dead_server", ok=dead["ok"], message=dead.get("message", ""))
    # cancelled while the server works on a large layer: neither signal comes, within 2 s or later
    spec = layer(PLAN["large_layer"])
    png = pixels.encode_png(pixels.to_bgra8(spec["data"], spec["model"], spec["depth"]), spec["width"], spec["height"])
    start = time.perf_counter()
    cancelled = call(server, lambda c: c.segment(png, [("output", "mask")]), cancel_after=0.05)
    record("cancelled", emitted=sorted(cancelled), seconds=time.perf_counter() - start)
    encoded = off_the_ui_thread(lambda: pixels.encode_png(spec["data"], spec["width"], spec["height"]))  # RGBA/U8
    failed = off_the_ui_thread(lambda: pixels.decode_mask(b"not a png", 4, 4))
    record(
        "background",
        same_png=encoded["value"] == png,
        threads=[encoded["worker"], encoded["delivered_on_ui_thread"], failed["delivered_on_ui_thread"]],
        error=failed["error"],
    )
    try:
        pixels.decode_mask(b"not a png", 4, 4)
        record("not_png", message="")
    except ValueError as err:
        record("not_png", message=str(err))


if __name__ == "__main__":
    main()
    (WORK / "done").write_text("ok")
