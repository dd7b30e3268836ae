"""Runs the slow steps that need no Krita API (colour conversion, PNG encoding and decoding) on a Python
thread, so Krita keeps drawing and answering input meanwhile: a 24-megapixel layer takes seconds to
encode. Qt lets go of Python's lock inside QImage's own work, and QImage (unlike QPixmap) may be used off
the UI thread. Krita's own API stays on the UI thread: results come back there through a queued signal."""

import threading

from .qt import QObject, pyqtSignal, pyqtSlot


class Background(QObject):
    """`run(work, then)`: `work()` on a new thread, then `then(result, error)` on the UI thread, where
    `error` is the exception `work` raised (or None). Nothing here cancels: the caller drops what it no
    longer wants. Keep the runner while work is under way (the extension owns one for its lifetime): an
    answer sent to a deleted runner is lost."""

    _done = pyqtSignal(object, object, object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._done.connect(self._deliver)  # this object lives on the UI thread: a queued call from threads

    def run(self, work, then) -> None:
        threading.Thread(target=self._work, args=(work, then), name="birefnet-krita", daemon=True).start()

    def _work(self, work, then) -> None:
        try:
            result, error = work(), None
        except Exception as err:  # noqa: BLE001 - any failure goes to `then`, which says it
            result, error = None, err
        try:
            self._done.emit(then, result, error)
        except RuntimeError:  # Krita closed meanwhile: nobody is left to tell
            pass

    @pyqtSlot(object, object, object)
    def _deliver(self, then, result, error) -> None:
        then(result, error)
