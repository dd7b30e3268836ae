"""The BiRefNet docker: server, model and refinement settings, the three actions as buttons, the
state of the running request and its Cancel button."""

import json

from krita import DockWidget, Krita

from . import extension, settings
from .client import ServerCall
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

RESOLUTIONS = ("native", "1024", "aspect")


class BiRefNetDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle("BiRefNet")
        self._check = None
        root = QWidget(self)
        layout = QVBoxLayout(root)

        server = QGroupBox("Server", root)
        form = QFormLayout(server)
        self.server = self._line("server", settings.DEFAULT_SERVER)
        form.addRow("URL", self.server)
        if settings.server_overridden():
            form.addRow(QLabel(f"{settings.SERVER_ENV} overrides it: {settings.server_url()}"))
        self.token = self._line("token", "only if the server asks for one")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("Token", self.token)
        self.weights = QComboBox()
        self.weights.setEditable(True)
        self.weights.addItem("")
        self.weights.setCurrentText(settings.get("weights"))
        self.weights.setToolTip("Empty: the server's model. Otherwise a short name the server knows (Check lists them)")
        self.weights.currentTextChanged.connect(lambda text: settings.put("weights", text.strip()))
        form.addRow("Weights", self.weights)
        self.resolution = QComboBox()
        self.resolution.addItems(RESOLUTIONS)
        self.resolution.setCurrentText(settings.get("resolution"))
        self.resolution.currentTextChanged.connect(lambda text: settings.put("resolution", text))
        form.addRow("Resolution", self.resolution)
        form.addRow(self._toggle("highres", "Large images: coarse to fine (sharper edges, two passes)"))
        check = QPushButton("Check server")
        check.clicked.connect(self.check_server)
        form.addRow(check)
        layout.addWidget(server)

        refine = QGroupBox("Edges (all off: the model's own mask)", root)
        form = QFormLayout(refine)
        form.addRow("Black point", self._number("black_point", 0.0, 1.0, 0.01))
        form.addRow("White point", self._number("white_point", 0.0, 1.0, 0.01))
        form.addRow("Threshold (0 = soft)", self._number("threshold", 0.0, 1.0, 0.05))
        form.addRow("Grow / shrink (px)", self._integer("grow", -256, 256))
        form.addRow("Guided filter radius", self._integer("guided_radius", 0, 64))
        form.addRow("Feather (px)", self._number("feather", 0.0, 100.0, 0.5))
        form.addRow(self._toggle("fill_holes", "Fill holes"))
        form.addRow(self._toggle("foreground", "Cut out: clean edge colours (foreground estimation)"))
        layout.addWidget(refine)

        buttons = QHBoxLayout()
        for action_id, text in extension.ACTIONS.items():
            button = QPushButton(text.replace(" (BiRefNet)", ""))
            button.clicked.connect(lambda _checked=False, a=action_id: Krita.instance().action(a).trigger())
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.cancel.clicked.connect(lambda: extension.current() and extension.current().cancel())
        self.state = QLabel("")
        self.state.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.state, 1)
        row.addWidget(self.cancel)
        layout.addLayout(row)
        layout.addStretch(1)
        self.setWidget(root)
        ext = extension.current()
        if ext is not None:
            ext.status.connect(self._show_status)
            ext.finished.connect(lambda *_: self.cancel.setEnabled(False))

    def canvasChanged(self, canvas):
        pass

    def _line(self, name: str, placeholder: str):
        edit = QLineEdit(settings.get(name))
        edit.setPlaceholderText(placeholder)
        edit.editingFinished.connect(lambda: settings.put(name, edit.text().strip()))
        return edit

    def _number(self, name: str, low: float, high: float, step: float):
        box = QDoubleSpinBox()
        box.setRange(low, high)
        box.setSingleStep(step)
        box.setDecimals(3)
        box.setValue(settings.get(name))
        box.valueChanged.connect(lambda value: settings.put(name, value))
        return box

    def _integer(self, name: str, low: int, high: int):
        box = QSpinBox()
        box.setRange(low, high)
        box.setValue(settings.get(name))
        box.valueChanged.connect(lambda value: settings.put(name, value))
        return box

    def _toggle(self, name: str, text: str):
        box = QCheckBox(text)
        box.setChecked(settings.get(name))
        box.toggled.connect(lambda value: settings.put(name, value))
        return box

    def _show_status(self, text: str) -> None:
        ext = extension.current()
        self.cancel.setEnabled(bool(ext and ext.busy))
        self.state.setText(text)

    def check_server(self) -> None:
        """GET /health and /v1/models: says what the server runs and fills the weights list."""
        settings.put("server", self.server.text().strip())
        settings.put("token", self.token.text().strip())
        self._check = ServerCall(settings.server_url(), settings.token(), self)
        self._check.succeeded.connect(self._health)
        self._check.failed.connect(self.state.setText)
        self.state.setText(f"Asking {settings.server_url()}...")
        self._check.get("/health")

    def _health(self, body: bytes) -> None:
        info = json.loads(body)
        self.state.setText(
            f"Server OK: {info.get('model')} on {info.get('device')} ({info.get('dtype')}), "
            f"version {info.get('version')}"
        )
        models = ServerCall(settings.server_url(), settings.token(), self)
        models.succeeded.connect(self._models)
        models.get("/v1/models")
        self._check = models

    def _models(self, body: bytes) -> None:
        current = self.weights.currentText()
        known = [entry.get("short") or entry.get("name") for entry in json.loads(body).get("known", [])]
        self.weights.blockSignals(True)
        self.weights.clear()
        self.weights.addItems([""] + [name for name in known if name])
        self.weights.setCurrentText(current)
        self.weights.blockSignals(False)
