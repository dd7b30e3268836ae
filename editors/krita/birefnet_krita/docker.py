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
# What `birefnet serve` accepts (its MAX_RADIUS caps; the levels and threshold as birefnet.refine.Refinement
# checks them): a box that went further would only get the request refused.
MAX_GROW, MAX_GUIDED_RADIUS, MAX_FEATHER = 64, 32, 256
STEP = 0.001  # the float boxes' resolution: the threshold stays below 1, the black point below the white point


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
        self.weights.addItems(["", settings.get("weights")] if settings.get("weights") else [""])
        self.weights.setCurrentText(settings.get("weights"))
        self.weights.setToolTip("Empty: the server's model. Check server lists the other weights it offers")
        self.weights.currentTextChanged.connect(lambda text: settings.put("weights", text))
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
        self.numbers = {}  # setting name -> its box
        form.addRow("Black point", self._number("black_point", 0.0, 1.0 - STEP, 0.01))
        form.addRow("White point", self._number("white_point", STEP, 1.0, 0.01))
        self._keep_levels_apart()
        form.addRow("Threshold (0 = soft)", self._number("threshold", 0.0, 1.0 - STEP, 0.05))
        form.addRow("Grow / shrink (px)", self._integer("grow", -MAX_GROW, MAX_GROW))
        form.addRow("Guided filter radius", self._integer("guided_radius", 0, MAX_GUIDED_RADIUS))
        form.addRow("Feather (px)", self._number("feather", 0.0, MAX_FEATHER, 0.5))
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
        box.setDecimals(3)  # before the range, which Qt rounds to the decimals
        box.setSingleStep(step)
        return self._ranged(name, box, low, high)

    def _integer(self, name: str, low: int, high: int):
        return self._ranged(name, QSpinBox(), low, high)

    def _ranged(self, name: str, box, low, high):
        """A stored value out of range (saved by an older plug-in) is clamped, and the clamped value saved."""
        box.setRange(low, high)
        box.valueChanged.connect(lambda value: settings.put(name, value))
        box.setValue(settings.get(name))
        self.numbers[name] = box
        return box

    def _keep_levels_apart(self) -> None:
        """The server needs black point < white point: each box stops one step short of the other's value."""
        black, white = self.numbers["black_point"], self.numbers["white_point"]
        black.valueChanged.connect(lambda value: white.setMinimum(value + STEP))
        white.valueChanged.connect(lambda value: black.setMaximum(value - STEP))
        black.setMaximum(white.value() - STEP)
        white.setMinimum(black.value() + STEP)

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
        problem = settings.server_url_problem()
        if problem:
            self.state.setText(problem)
            return
        self._check = ServerCall(settings.server_url(), settings.token(), self)
        self._check.succeeded.connect(self._health)
        self._check.failed.connect(self.state.setText)
        self.state.setText(f"Asking {settings.server_url()}...")
        self._check.get("/health")

    def _info(self, body: bytes, path: str):
        """The answer's JSON object, or None after saying that another program answers there (a 200 that is
        not JSON would otherwise raise inside this Qt slot and leave "Asking..." on screen)."""
        try:
            info = json.loads(body)
        except ValueError:  # includes bytes that are not UTF-8
            info = None
        if not isinstance(info, dict):
            self.state.setText(
                f"The program at {settings.server_url()} is not a BiRefNet server: its {path} answer is not "
                "BiRefNet's JSON. Start one with: birefnet serve, or fix the URL."
            )
            return None
        return info

    def _health(self, body: bytes) -> None:
        info = self._info(body, "/health")
        if info is None:
            return
        self.state.setText(
            f"Server OK: {info.get('model')} on {info.get('device')} ({info.get('dtype')}), "
            f"version {info.get('version')}"
        )
        models = ServerCall(settings.server_url(), settings.token(), self)
        models.succeeded.connect(self._models)
        models.failed.connect(self.state.setText)
        models.get("/v1/models")
        self._check = models

    def _models(self, body: bytes) -> None:
        """The weights list becomes what this server accepts: its own model ("") and what it offers
        (`offered`; its `known` list names checkpoints it may not serve). A pick it does not offer goes
        back to the server's model, saying so, rather than failing every request with a 400."""
        info = self._info(body, "/v1/models")
        if info is None:
            return
        offered = [name for name in info.get("offered", []) if name]
        pick = self.weights.currentText()
        keep = pick if pick in offered else ""
        self.weights.blockSignals(True)
        self.weights.clear()
        self.weights.addItems([""] + offered)
        self.weights.setCurrentText(keep)
        self.weights.blockSignals(False)
        settings.put("weights", keep)
        if pick not in (keep, info.get("loaded")):
            self.state.setText(f"{self.state.text()}\nIt does not offer the weights {pick!r}: its own model is used.")
