"""The one client of `birefnet serve`: asynchronous requests through Qt's network stack, so Krita's
interface keeps running while the server works; each call can be cancelled."""

import json
import uuid

from .qt import (
    QByteArray,
    QHttpMultiPart,
    QHttpPart,
    QNetworkAccessManager,
    QNetworkReply,
    QNetworkRequest,
    QObject,
    QTimer,
    QUrl,
    pyqtSignal,
)

PROGRESS_EVERY_MS = 400  # how often a request's progress is asked for while the server works on it
NOT_RUNNING = (
    QNetworkReply.NetworkError.ConnectionRefusedError,
    QNetworkReply.NetworkError.HostNotFoundError,
    QNetworkReply.NetworkError.RemoteHostClosedError,
    QNetworkReply.NetworkError.TimeoutError,
)


def not_running_message(url: str) -> str:
    return (
        f"No BiRefNet server answers at {url}.\n"
        "Start it in a terminal with:  birefnet serve\n"
        "(from the birefnet-toolkit Python package), or set the server in the BiRefNet docker."
    )


class ServerCall(QObject):
    """One request. Emits `succeeded(bytes)` with the response body, or `failed(str)` with a one-line
    reason a user can act on; `cancel()` aborts and emits neither. While the server works on a segment
    request, `progressed(float)` says how far it is (0 to 1), from servers that report it."""

    succeeded = pyqtSignal(object)
    failed = pyqtSignal(str)
    progressed = pyqtSignal(float)

    def __init__(self, server: str, token: str = "", parent=None):
        super().__init__(parent)
        self.server = server
        self.token = token
        self.cancelled = False
        self._manager = QNetworkAccessManager(self)
        self._reply = None
        self._request_id = uuid.uuid4().hex
        self._poll = None  # the progress request under way
        self._poll_timer = QTimer(self)
        self._poll_timer.timeout.connect(self._ask_progress)

    def _request(self, path: str):
        request = QNetworkRequest(QUrl(self.server + path))
        if self.token:
            request.setRawHeader(b"Authorization", b"Bearer " + self.token.encode())
        return request

    def get(self, path: str) -> None:
        self._watch(self._manager.get(self._request(path)))

    def segment(self, png: bytes, fields: list) -> None:
        """POST /v1/segment: the image as a PNG file plus plain form fields (repeatable, e.g. box)."""
        form = QHttpMultiPart(QHttpMultiPart.ContentType.FormDataType)
        image = QHttpPart()
        image.setHeader(QNetworkRequest.KnownHeaders.ContentTypeHeader, "image/png")
        image.setHeader(
            QNetworkRequest.KnownHeaders.ContentDispositionHeader, 'form-data; name="image"; filename="layer.png"'
        )
        image.setBody(QByteArray(png))
        form.append(image)
        for name, value in fields:
            part = QHttpPart()
            part.setHeader(QNetworkRequest.KnownHeaders.ContentDispositionHeader, f'form-data; name="{name}"')
            part.setBody(QByteArray(str(value).encode()))
            form.append(part)
        request = self._request("/v1/segment")
        # a header, not a form field: a server from before progress reports ignores it (it refuses unknown fields)
        request.setRawHeader(b"X-Request-ID", self._request_id.encode())
        reply = self._manager.post(request, form)
        form.setParent(reply)  # lives as long as the upload
        self._watch(reply)
        self._poll_timer.start(PROGRESS_EVERY_MS)

    def _ask_progress(self) -> None:
        if self._poll is None:  # one at a time: a busy server may answer slowly
            poll = self._poll = self._manager.get(self._request(f"/v1/progress/{self._request_id}"))
            poll.finished.connect(lambda: self._progress_answered(poll))

    def _progress_answered(self, reply) -> None:
        if reply is self._poll:
            self._poll = None
        reply.deleteLater()
        if self.cancelled or self._reply is None:  # answered, cancelled or aborted meanwhile
            return
        if reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute) != 200:
            return  # not yet in line, already answered, or a server without progress reports
        try:
            share = float(json.loads(reply.readAll().data().decode("utf-8"))["progress"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return
        self.progressed.emit(min(max(share, 0.0), 1.0))

    def _stop_polling(self) -> None:
        self._poll_timer.stop()
        poll, self._poll = self._poll, None
        if poll is not None:
            poll.abort()

    def cancel(self) -> None:
        self.cancelled = True
        self._stop_polling()
        if self._reply is not None:
            self._reply.abort()

    def _watch(self, reply) -> None:
        self._reply = reply
        reply.finished.connect(self._finished)

    def _finished(self) -> None:
        reply, self._reply = self._reply, None
        self._stop_polling()
        reply.deleteLater()
        if self.cancelled:
            return
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        body = reply.readAll().data()
        if status == 200 and reply.error() == QNetworkReply.NetworkError.NoError:
            self.succeeded.emit(body)
        elif status == 200:  # its answer began, then the connection broke (the server stopped or was killed)
            self.failed.emit(
                f"The BiRefNet server at {self.server} broke off its answer ({reply.errorString()}): "
                "check that it is still running and try again."
            )
        elif status:
            self.failed.emit(self._http_error(int(status), body))
        elif reply.error() in NOT_RUNNING:
            self.failed.emit(not_running_message(self.server))
        else:
            self.failed.emit(f"BiRefNet server at {self.server}: {reply.errorString()}")

    def _http_error(self, status: int, body: bytes) -> str:
        try:
            reason = json.loads(body.decode("utf-8"))["error"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            reason = body.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"
        if status == 401:
            return (
                f"The BiRefNet server at {self.server} needs a token ({reason}): enter it in the BiRefNet "
                "docker or set BIREFNET_SERVER_TOKEN."
            )
        return f"BiRefNet server ({status}): {reason}"
