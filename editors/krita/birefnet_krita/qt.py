"""The Qt binding Krita embeds: PyQt5 on Krita 5.x, PyQt6 on Krita 6.x (where importing PyQt5 fails).

Enums are written in their scoped form (QImage.Format.Format_ARGB32), which both bindings accept.
"""

try:
    from pykrita import qt_major_version

    QT_MAJOR = qt_major_version()
except (ImportError, AttributeError):  # Krita before 6 has no qt_major_version: always Qt 5
    QT_MAJOR = 5

if QT_MAJOR >= 6:
    from PyQt6.QtCore import QBuffer, QByteArray, QIODevice, QObject, QRect, Qt, QTimer, QUrl, pyqtSignal, pyqtSlot
    from PyQt6.QtGui import QImage
    from PyQt6.QtNetwork import QHttpMultiPart, QHttpPart, QNetworkAccessManager, QNetworkReply, QNetworkRequest
    from PyQt6.QtWidgets import (
        QCheckBox,
        QComboBox,
        QDoubleSpinBox,
        QFormLayout,
        QGroupBox,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QMessageBox,
        QProgressDialog,
        QPushButton,
        QSpinBox,
        QVBoxLayout,
        QWidget,
    )
else:
    from PyQt5.QtCore import QBuffer, QByteArray, QIODevice, QObject, QRect, Qt, QTimer, QUrl, pyqtSignal, pyqtSlot
    from PyQt5.QtGui import QImage
    from PyQt5.QtNetwork import QHttpMultiPart, QHttpPart, QNetworkAccessManager, QNetworkReply, QNetworkRequest
    from PyQt5.QtWidgets import (
        QCheckBox,
        QComboBox,
        QDoubleSpinBox,
        QFormLayout,
        QGroupBox,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QMessageBox,
        QProgressDialog,
        QPushButton,
        QSpinBox,
        QVBoxLayout,
        QWidget,
    )

__all__ = [
    "QT_MAJOR",
    "QBuffer",
    "QByteArray",
    "QCheckBox",
    "QComboBox",
    "QDoubleSpinBox",
    "QFormLayout",
    "QGroupBox",
    "QHBoxLayout",
    "QHttpMultiPart",
    "QHttpPart",
    "QIODevice",
    "QImage",
    "QLabel",
    "QLineEdit",
    "QMessageBox",
    "QNetworkAccessManager",
    "QNetworkReply",
    "QNetworkRequest",
    "QObject",
    "QProgressDialog",
    "QPushButton",
    "QRect",
    "QSpinBox",
    "QTimer",
    "QUrl",
    "QVBoxLayout",
    "QWidget",
    "Qt",
    "pyqtSignal",
    "pyqtSlot",
]
