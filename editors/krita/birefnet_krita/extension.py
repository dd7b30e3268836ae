"""The three actions (Remove background, Select subject, Cut out) and the job that runs one of them.

A job reads the active layer's pixels on the canvas, sends them to the server off the UI thread, and
applies the answer when it comes: a transparency mask, a selection or a new layer. Nothing is written
into the layer's own pixels. With an active selection its bounding box goes to the server as the
guiding box (the object inside it; nothing outside it), and the selection is left as it was."""

from krita import Extension, Krita, Selection

from . import settings
from .client import ServerCall
from .pixels import UnsupportedLayer, check_colour_space, decode_bgra, decode_mask, encode_png, from_bgra8, to_bgra8
from .qt import QByteArray, QMessageBox, QProgressDialog, QRect, Qt, pyqtSignal

REMOVE_BACKGROUND = "birefnet_remove_background"
SELECT_SUBJECT = "birefnet_select_subject"
CUT_OUT = "birefnet_cut_out"
ACTIONS = {
    REMOVE_BACKGROUND: "Remove Background (BiRefNet)",
    SELECT_SUBJECT: "Select Subject (BiRefNet)",
    CUT_OUT: "Cut Out to New Layer (BiRefNet)",
}
MENU = "tools/scripts/birefnet"
MASK_NAME = "Background removed (BiRefNet)"
PIXEL_LAYERS = ("paintlayer",)  # their own pixels; other layers are read through their projection
_current = None


def current():
    """The extension Krita created (the docker talks to it)."""
    return _current


class Source:
    """What a job works on: the document, the layer, its pixels on the canvas and the guiding box."""

    def __init__(self, doc, node):
        self.doc, self.node = doc, node
        check_colour_space(node.colorModel(), node.colorDepth())
        bounds = node.bounds().intersected(QRect(0, 0, doc.width(), doc.height()))
        if bounds.isEmpty():
            raise UnsupportedLayer(f'The layer "{node.name()}" has no pixels on the canvas.')
        self.x, self.y, self.width, self.height = bounds.x(), bounds.y(), bounds.width(), bounds.height()
        read = node.pixelData if node.type() in PIXEL_LAYERS else node.projectionPixelData
        raw = read(self.x, self.y, self.width, self.height).data()
        self.png = encode_png(to_bgra8(raw, node.colorModel(), node.colorDepth()), self.width, self.height)
        self.selection = doc.selection()
        self.box = self._box(bounds)

    def _box(self, bounds):
        """The selection's bounding box in the uploaded pixels' coordinates, or None for no (or an all
        covering) selection."""
        if self.selection is None:
            return None
        sel = self.selection
        box = QRect(sel.x(), sel.y(), sel.width(), sel.height()).intersected(bounds)
        if box.isEmpty():
            raise UnsupportedLayer(
                "The selection does not overlap the layer: select around the object, or "
                "deselect (Ctrl+Shift+A) to use the whole layer."
            )
        if box == bounds:
            return None
        return f"{box.x() - self.x},{box.y() - self.y},{box.width()},{box.height()}"

    def fields(self, output: str) -> list:
        fields = settings.request_fields(output, boxed=bool(self.box))
        if self.box:
            fields.append(("box", self.box))
        return fields


class BiRefNetExtension(Extension):
    """Registers the actions; runs one job at a time."""

    finished = pyqtSignal(str, bool, str)  # action id, success, message (for scripts and the docker)
    status = pyqtSignal(str)

    def __init__(self, parent):
        super().__init__(parent)
        global _current
        _current = self
        self.call = None
        self.action_id = ""
        self._progress = None
        self._message_box = None

    def setup(self):
        pass

    def createActions(self, window):
        for action_id, text in ACTIONS.items():
            action = window.createAction(action_id, text, MENU)
            action.triggered.connect(lambda _checked=False, a=action_id: self.run(a))

    @property
    def busy(self) -> bool:
        return self.call is not None

    def run(self, action_id: str) -> None:
        if self.busy:
            self._notify("BiRefNet is still working on the previous request (cancel it in the BiRefNet docker).")
            return
        doc = Krita.instance().activeDocument()
        if doc is None:
            self._fail(action_id, "Open an image first.")
            return
        node = doc.activeNode()
        if node is not None and node.type().endswith("mask"):
            node = node.parentNode()
        if node is None:
            self._fail(action_id, "Select a layer first.")
            return
        try:
            if action_id == CUT_OUT:  # the new layer takes the image's colour space
                check_colour_space(doc.colorModel(), doc.colorDepth(), "This image")
            source = Source(doc, node)
        except UnsupportedLayer as err:
            self._fail(action_id, str(err))
            return
        output = "rgba" if action_id == CUT_OUT else "mask"
        call = ServerCall(settings.server_url(), settings.token(), self)
        call.succeeded.connect(lambda body: self._apply(action_id, source, body))
        call.failed.connect(lambda message: self._fail(action_id, message))
        self.call, self.action_id = call, action_id
        self._show_progress(action_id, source)
        try:
            call.segment(source.png, source.fields(output))
        except Exception as err:  # noqa: BLE001 - whatever it is, say it and never leave the plug-in busy
            self._fail(action_id, f"Could not send the request: {err}")

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self._end()
            self.status.emit("Cancelled.")
            self.finished.emit(self.action_id, False, "cancelled")

    def _show_progress(self, action_id: str, source) -> None:
        window = Krita.instance().activeWindow()
        parent = window.qwindow() if window else None
        text = f"{ACTIONS[action_id]}: {source.width}x{source.height} pixels at {settings.server_url()}..."
        dialog = QProgressDialog(text, "Cancel", 0, 0, parent)
        dialog.setObjectName("birefnet_progress")
        dialog.setWindowTitle("BiRefNet")
        dialog.setWindowModality(Qt.WindowModality.NonModal)  # Krita stays usable meanwhile
        dialog.setMinimumDuration(800)
        dialog.canceled.connect(self.cancel)
        dialog.setValue(0)
        self._progress = dialog
        self.status.emit(text)

    def _end(self) -> None:
        self.call = None
        if self._progress is not None:
            self._progress.canceled.disconnect(self.cancel)
            self._progress.close()
            self._progress.deleteLater()
            self._progress = None

    def _apply(self, action_id: str, source, body: bytes) -> None:
        self._end()
        if source.doc not in Krita.instance().documents():
            self._fail(action_id, "The document was closed before the result came.")
            return
        try:
            if action_id == CUT_OUT:
                message = self._cut_out(source, decode_bgra(body, source.width, source.height))
            else:
                mask = decode_mask(body, source.width, source.height)
                if action_id == SELECT_SUBJECT:
                    message = self._select(source, mask)
                else:
                    message = self._remove_background(source, mask)
        except (ValueError, UnsupportedLayer) as err:
            self._fail(action_id, str(err))
            return
        self._notify(message)
        self.finished.emit(action_id, True, message)

    def _mask_selection(self, source, mask: bytes):
        selection = Selection()
        selection.setPixelData(QByteArray(mask), source.x, source.y, source.width, source.height)
        return selection

    def _select(self, source, mask: bytes) -> str:
        """The mask becomes the selection (soft: 0-255 selectedness); it lies inside the guiding box."""
        source.doc.setSelection(self._mask_selection(source, mask))
        return "Subject selected."

    def _remove_background(self, source, mask: bytes) -> str:
        doc, node = source.doc, source.node
        if hasattr(doc, "createTransparencyMask"):  # Krita 5.2+
            layer_mask = doc.createTransparencyMask(MASK_NAME)
            layer_mask.setPixelData(QByteArray(mask), source.x, source.y, source.width, source.height)
            node.addChildNode(layer_mask, None)
        else:  # Krita 5.1: the built-in action turns the global selection into a mask on the active layer
            # (or, when a mask is active, on that mask's layer)
            if Krita.instance().activeDocument() != doc:
                raise UnsupportedLayer("Switch back to the image the background removal was started on and try again.")
            active = doc.activeNode()
            if active is None or node.uniqueId() not in (active.uniqueId(), active.parentNode().uniqueId()):
                raise UnsupportedLayer(
                    f'The active layer changed while BiRefNet worked: select "{node.name()}" and try again.'
                )
            kept = source.selection.duplicate() if source.selection is not None else None
            before = {child.uniqueId() for child in node.childNodes()}
            doc.setSelection(self._mask_selection(source, mask))
            Krita.instance().action("add_new_transparency_mask").trigger()
            doc.waitForDone()
            for child in node.childNodes():
                if child.uniqueId() not in before and child.type() == "transparencymask":
                    child.setName(MASK_NAME)
            self._restore_selection(doc, kept)
        return f'Background removed: a transparency mask on "{node.name()}".'

    def _restore_selection(self, doc, kept) -> None:
        if kept is not None:
            doc.setSelection(kept)
        elif doc.selection() is not None:
            Krita.instance().action("deselect").trigger()

    def _cut_out(self, source, bgra: bytes) -> str:
        doc, node = source.doc, source.node
        layer = doc.createNode(f"{node.name()} (cut out)", "paintlayer")
        data = from_bgra8(bgra, layer.colorModel(), layer.colorDepth())
        layer.setPixelData(QByteArray(data), source.x, source.y, source.width, source.height)
        node.parentNode().addChildNode(layer, node)
        doc.setActiveNode(layer)
        return f'Cut out to the new layer "{layer.name()}".'

    def _fail(self, action_id: str, message: str) -> None:
        """No modal dialog: a message box that does not block Krita (and stays until closed)."""
        self._end()
        self.status.emit(message)
        window = Krita.instance().activeWindow()
        if self._message_box is not None:
            self._message_box.close()
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "BiRefNet",
            message,
            QMessageBox.StandardButton.Ok,
            window.qwindow() if window else None,
        )
        box.setObjectName("birefnet_message")
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.show()
        self._message_box = box
        self.finished.emit(action_id, False, message)

    def _notify(self, message: str) -> None:
        self.status.emit(message)
        window = Krita.instance().activeWindow()
        view = window.activeView() if window else None
        if view is not None:
            view.showFloatingMessage(message, Krita.instance().icon("dialog-information"), 3000, 1)
