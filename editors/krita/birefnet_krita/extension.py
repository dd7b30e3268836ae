"""The three actions (Remove background, Select subject, Cut out) and the job that runs one of them.

A job reads the active layer's pixels on the canvas, encodes them off the UI thread, sends them to the
server, decodes the answer off the UI thread and applies it on the UI thread: a transparency mask, a
selection or a new layer. Nothing is written into the layer's own pixels. With an active selection its
bounding box goes to the server as the guiding box (the object inside it; nothing outside it), and the
selection is left as it was."""

from krita import Extension, Krita

from . import settings
from .background import Background
from .client import ServerCall
from .pixels import UnsupportedLayer, check_colour_space
from .qt import QByteArray, QMessageBox, QProgressDialog, Qt, pyqtSignal
from .source import Source
from .undoable_selection import select_mask

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
_current = None


def current():
    """The extension Krita created (the docker talks to it)."""
    return _current


def _require_active(doc, action: str) -> None:
    """Krita's own actions (Deselect, Add Transparency Mask) work on the active image only."""
    if Krita.instance().activeDocument() != doc:
        raise UnsupportedLayer(f"Switch back to the image {action} was started on and try again.")


def _in_document(doc, node) -> bool:
    """Whether `node` is still in `doc`'s layer stack (a deleted layer keeps no parent: applying a result to
    it raised inside Krita's slot, a Python error dialog)."""
    top = node
    while top is not None and top.parentNode() is not None:
        top = top.parentNode()
    return top is not None and top is not node and top.uniqueId() == doc.rootNode().uniqueId()


def _require_mask_can_be_added(node) -> None:
    """Said before the server works: Krita adds no mask to a locked layer; and a second mask would be computed
    from the same pixels and multiply the first, thinning soft edges (hair)."""
    if node.locked():
        raise UnsupportedLayer(f'"{node.name()}" is locked: unlock it to remove its background.')
    if any(child.type() == "transparencymask" and child.name() == MASK_NAME for child in node.childNodes()):
        raise UnsupportedLayer(
            f'"{node.name()}" already has the mask "{MASK_NAME}": delete it first to remove the background again.'
        )


class Job:
    """One action's run, from reading the layer to applying the answer; `call` is its request while it is
    on the way."""

    def __init__(self, action_id: str, source: Source):
        self.action_id, self.source, self.call = action_id, source, None


class BiRefNetExtension(Extension):
    """Registers the actions; runs one job at a time."""

    finished = pyqtSignal(str, bool, str)  # action id, success, message (for scripts and the docker)
    status = pyqtSignal(str)

    def __init__(self, parent):
        super().__init__(parent)
        global _current
        _current = self
        self.job = None
        self._background = Background(self)
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
        return self.job is not None

    def run(self, action_id: str) -> None:
        """Reads the layer (Krita's API: here, on the UI thread); its PNG is made on a worker thread."""
        if self.busy:
            self._notify("BiRefNet is still working on the previous request (cancel it in the BiRefNet docker).")
            return
        problem = settings.server_url_problem()
        if problem:
            self._fail(action_id, problem)
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
        job = self.job = Job(action_id, None)  # busy already: reading a layer in another profile runs Krita's UI
        try:
            if action_id == REMOVE_BACKGROUND:
                _require_mask_can_be_added(node)
            if action_id == CUT_OUT:  # the new layer takes the image's colour space
                check_colour_space(doc.colorModel(), doc.colorDepth(), "This image")
            source = Source(doc, node, "rgba" if action_id == CUT_OUT else "mask")
        except UnsupportedLayer as err:
            if job is self.job:
                self._fail(action_id, str(err))
            return
        except BaseException:
            if job is self.job:  # never left busy
                self._end()
            raise
        if job is not self.job:  # cancelled while Krita converted the layer's colours
            return
        job.source = source
        self._show_progress(action_id, source)
        self._background.run(source.png, lambda png, error: self._send(job, png, error))

    def _send(self, job: Job, png, error) -> None:
        if job is not self.job:  # cancelled while encoding: nothing is sent
            return
        if error is not None:
            self._fail(job.action_id, f"Could not prepare the layer: {error}")
            return
        call = job.call = ServerCall(settings.server_url(), settings.token(), self)
        call.succeeded.connect(lambda body: self._received(job, body))
        call.failed.connect(lambda message: self._fail(job.action_id, message))
        call.progressed.connect(lambda share: self._progressed(job, share))
        try:
            call.segment(png, job.source.fields())
        except Exception as err:  # noqa: BLE001 - whatever it is, say it and never leave the plug-in busy
            self._fail(job.action_id, f"Could not send the request: {err}")

    def _received(self, job: Job, body: bytes) -> None:
        job.call = None
        self._background.run(lambda: job.source.answer(body), lambda data, error: self._apply(job, data, error))

    def cancel(self) -> None:
        """Stops the job at any stage: an upload is aborted, a result still being encoded or decoded is dropped."""
        job = self.job
        if job is not None:
            if job.call is not None:
                job.call.cancel()
            self._end()
            self.status.emit("Cancelled.")
            self.finished.emit(job.action_id, False, "cancelled")

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

    def _progressed(self, job: Job, share: float) -> None:
        """The server's progress report: the dialog's busy bar becomes a bar that fills (to 99% at most: a full
        bar closes the dialog, which goes when the result has landed)."""
        if job is self.job and self._progress is not None:
            self._progress.setMaximum(100)
            self._progress.setValue(min(99, round(share * 100)))

    def _end(self) -> None:
        self.job = None
        if self._progress is not None:
            self._progress.canceled.disconnect(self.cancel)
            self._progress.close()
            self._progress.deleteLater()
            self._progress = None

    def _apply(self, job: Job, data, error) -> None:
        """The decoded answer into the document (Krita's API: on the UI thread)."""
        if job is not self.job:  # cancelled while decoding
            return
        action_id, source = job.action_id, job.source
        if error is None and action_id == CUT_OUT:
            try:
                data = source.layer_pixels(data)  # from sRGB to another profile: Krita's UI runs meanwhile
            except UnsupportedLayer as err:
                error = err
            if job is not self.job:  # cancelled meanwhile
                return
        self._end()
        if error is not None:
            reason = str(error) if isinstance(error, ValueError) else f"Could not read the answer: {error}"
            self._fail(action_id, reason)
            return
        if source.doc not in Krita.instance().documents():
            self._fail(action_id, "The document was closed before the result came.")
            return
        if not _in_document(source.doc, source.node):
            self._fail(action_id, f'The layer "{source.node.name()}" was deleted before the result came.')
            return
        try:
            if action_id == CUT_OUT:
                message = self._cut_out(source, data)
            elif action_id == SELECT_SUBJECT:
                message = self._select(source, data)
            else:
                message = self._remove_background(source, data)
        except UnsupportedLayer as err:
            self._fail(action_id, str(err))
            return
        self._notify(message)
        self.finished.emit(action_id, True, message)

    def _select(self, source, mask: bytes) -> str:
        """The mask becomes the active selection (soft: 0-255 selectedness) in one undo step, as Krita's own
        Select Opaque makes it (undoable_selection.py); it lies inside the guiding box. An empty mask would
        only deselect: the selection is left as it was and the message says why."""
        _require_active(source.doc, "Select Subject")
        if mask.count(0) == len(mask):
            raise UnsupportedLayer(
                f'BiRefNet found no subject on "{source.node.name()}"'
                + (" inside the selection" if source.box else "")
                + ": the selection is unchanged."
            )
        select_mask(source.doc, source.node, mask, source.x, source.y, source.width, source.height)
        return "Subject selected."

    def _remove_background(self, source, mask: bytes) -> str:
        doc, node = source.doc, source.node
        if hasattr(doc, "createTransparencyMask"):  # Krita 5.2+: adding the node is one undo step
            layer_mask = doc.createTransparencyMask(MASK_NAME)
            layer_mask.setPixelData(QByteArray(mask), source.x, source.y, source.width, source.height)
            node.addChildNode(layer_mask, None)
        else:
            self._add_mask_with_krita_action(source, mask)
        return f'Background removed: a transparency mask on "{node.name()}".'

    def _add_mask_with_krita_action(self, source, mask: bytes) -> None:
        """Krita 5.1 has no createTransparencyMask, and a mask from createNode has no pixels to write: Krita's own
        Add Transparency Mask makes it (on the active layer, or beside the active mask), then the mask's pixels
        are written. No selection is set for it: that action's undo step brings back the global selection
        there was when it ran, so a temporary selection would reappear on Undo. The user's selection is put
        aside without an undo step and put back the same way; an active local selection mask only seeds the
        new mask, whose pixels are all overwritten. One Undo removes the mask and nothing else."""
        doc, node = source.doc, source.node
        _require_active(doc, "Remove Background")
        active = doc.activeNode()
        if active is None or node.uniqueId() not in (active.uniqueId(), active.parentNode().uniqueId()):
            raise UnsupportedLayer(
                f'The active layer changed while BiRefNet worked: select "{node.name()}" and try again.'
            )
        kept = doc.selection()
        before = {child.uniqueId() for child in node.childNodes()}
        if kept is not None:
            doc.setSelection(None)
        try:
            Krita.instance().action("add_new_transparency_mask").trigger()
            doc.waitForDone()
        finally:
            if kept is not None:
                doc.setSelection(kept)
        added = [c for c in node.childNodes() if c.uniqueId() not in before and c.type() == "transparencymask"]
        if not added:
            raise UnsupportedLayer(f'Krita did not add a transparency mask to "{node.name()}" (is it locked?).')
        layer_mask = added[0]
        layer_mask.setName(MASK_NAME)
        bounds = node.bounds()  # the new mask shows everything: hidden beyond the canvas, as on Krita 5.2+
        x, y, width, height = bounds.x(), bounds.y(), bounds.width(), bounds.height()
        layer_mask.setPixelData(QByteArray(bytes(width * height)), x, y, width, height)
        layer_mask.setPixelData(QByteArray(mask), source.x, source.y, source.width, source.height)
        doc.refreshProjection()

    def _cut_out(self, source, pixels: bytes) -> str:
        """`pixels` are in the image's colour space (Source.answer, Source.layer_pixels): a new layer takes them."""
        doc, node = source.doc, source.node
        layer = doc.createNode(f"{node.name()} (cut out)", "paintlayer")
        if (layer.colorModel(), layer.colorDepth(), layer.colorProfile()) != source.image_space:
            raise UnsupportedLayer("The image's colour space changed while BiRefNet worked: try again.")
        layer.setPixelData(QByteArray(pixels), source.x, source.y, source.width, source.height)
        # the layer you worked on stays the active one: Krita (5.1.5) cannot activate a layer a plug-in has
        # just added (Document.setActiveNode then only logs an assertion: its canvas has no shape for it)
        node.parentNode().addChildNode(layer, node)
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
