"""The plug-in's settings, kept in Krita's own configuration (kritarc, group "birefnet_krita") so that they
survive re-importing or updating the plug-in. Defaults ask the server for its plain result, which equals
`birefnet segment` on the same pixels; coarse to fine (`--highres`) and every refinement are the user's
choice."""

import os

from krita import Krita

from .qt import QUrl

GROUP = "birefnet_krita"
DEFAULT_SERVER = "http://127.0.0.1:7853"
SERVER_ENV = "BIREFNET_SERVER"
TOKEN_ENV = "BIREFNET_SERVER_TOKEN"

# name -> (default, kind); the names are the server's form fields, except the plug-in's own
# "server", "token" and "foreground" (the cut-out's colour estimation, on by default).
FIELDS = {
    "server": (DEFAULT_SERVER, str),
    "token": ("", str),
    "weights": ("", str),  # "" = the server's model
    "resolution": ("native", str),
    "highres": (False, bool),  # coarse to fine (not with a selection: the selection's box guides instead)
    "black_point": (0.0, float),
    "white_point": (1.0, float),
    "threshold": (0.0, float),
    "fill_holes": (False, bool),
    "grow": (0, int),
    "guided_radius": (0, int),
    "feather": (0.0, float),
    "foreground": (True, bool),
}
REFINEMENT = ("black_point", "white_point", "threshold", "fill_holes", "grow", "guided_radius", "feather")


def _parse(text: str, default, kind):
    if kind is bool:
        return text.strip().lower() == "true"
    try:
        return kind(text)
    except ValueError:
        return default


def get(name: str):
    default, kind = FIELDS[name]
    text = Krita.instance().readSetting(GROUP, name, "")
    return default if text == "" else _parse(text, default, kind)


def put(name: str, value) -> None:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    Krita.instance().writeSetting(GROUP, name, text)


def server_url() -> str:
    """BIREFNET_SERVER wins over the setting; a bare host:port gets http://."""
    url = (os.environ.get(SERVER_ENV) or get("server") or DEFAULT_SERVER).strip()
    scheme, _, rest = url.partition("://") if "://" in url else ("http", "", url)
    return f"{scheme}://{rest.rstrip('/')}"


def server_url_problem():
    """One line saying what is wrong with the server URL and where to set it, or None. Sent as it is, a
    malformed URL (a port out of range, a space, no host) read as "no server answers: start one"."""
    url = server_url()
    parsed = QUrl(url, QUrl.ParsingMode.StrictMode)
    if not parsed.isValid():
        reason = parsed.errorString().split(";")[0].lower()
    elif parsed.scheme() not in ("http", "https"):
        reason = "it must start with http:// or https://"
    elif not parsed.host():
        reason = "it names no host"
    else:
        return None
    where = f"set {SERVER_ENV} to" if server_overridden() else "set it in the BiRefNet docker to"
    return f'The BiRefNet server URL "{url}" is not valid ({reason}): {where} an address such as {DEFAULT_SERVER}.'


def server_overridden() -> bool:
    return bool(os.environ.get(SERVER_ENV))


def token() -> str:
    return get("token") or os.environ.get(TOKEN_ENV, "")


def request_fields(output: str, boxed: bool = False) -> list:
    """The /v1/segment form fields for one request: only what differs from the server's defaults.
    `boxed`: a selection's box goes along, which the server does not combine with coarse to fine."""
    fields = [("output", output)]
    if get("weights"):
        fields.append(("weights", get("weights")))
    if get("resolution") != "native":
        fields.append(("resolution", get("resolution")))
    if get("highres") and not boxed:
        fields.append(("highres", "true"))
    for name in REFINEMENT:
        value = get(name)
        if value != FIELDS[name][0]:
            fields.append((name, ("true" if value else "false") if isinstance(value, bool) else str(value)))
    if output == "rgba" and get("foreground"):
        fields.append(("foreground", "true"))
    return fields
