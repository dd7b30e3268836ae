"""`birefnet serve` as users run it (a subprocess on a free port of 127.0.0.1, the demo model): the
same pixels as `birefnet segment`, the rembg API, the security checks, every bad request answered
with a one-line 4xx JSON error while the server keeps serving, concurrent requests."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import ExifTags, Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import ROOT  # noqa: E402

from birefnet.cli import main as cli  # noqa: E402

EXAMPLE = ROOT / "examples" / "images" / "synthetic_0.jpg"
TOKEN = "s3cret-token"


class Server:
    """A `birefnet serve` subprocess; its log in a file (a full pipe would stall it). `without`: modules
    the server runs as if they were not installed."""

    def __init__(self, folder: Path, *flags: str, without: tuple[str, ...] = ()):
        folder.mkdir(parents=True, exist_ok=True)
        self.tmp = folder / "tmp"  # the server's temporary files: must stay empty
        self.tmp.mkdir()
        self.log_path = folder / "server.log"
        env = dict(os.environ, TMPDIR=str(self.tmp))
        env.pop("BIREFNET_SERVER_TOKEN", None)
        blocked = f"import sys; sys.modules.update(dict.fromkeys({list(without)!r}))"
        start = ["-c", f"{blocked}; from birefnet.cli import main; sys.exit(main(sys.argv[1:]))"]
        self.process = subprocess.Popen(
            [sys.executable, *start, "serve", "--port", "0", *flags],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "w"),
            env=env,
        )
        deadline = time.time() + 120
        while "at http://" not in self.log():
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log()}")
            time.sleep(0.2)
        line = next(line for line in self.log().splitlines() if "birefnet: serving" in line)
        self.url = line.split(" at ")[1].split()[0]
        self.host = self.url.removeprefix("http://")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def multipart(fields) -> tuple[bytes, str]:
    """(body, content type) of a form; fields: (name, value) with bytes values sent as files."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        if isinstance(value, bytes):
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="upload"\r\n'
                "Content-Type: application/octet-stream"
            )
        else:
            head, value = f'Content-Disposition: form-data; name="{name}"', str(value).encode()
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(server, path, fields=None, headers=None, method=None):
    """(status, content type, body bytes)."""
    body, kind = multipart(fields) if fields is not None else (None, None)
    request = urllib.request.Request(server.url + path, data=body, method=method, headers=dict(headers or {}))
    if kind:
        request.add_header("Content-Type", kind)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


def exchange(server, method, path, headers, body=b""):
    """(status, headers, JSON or None) of a raw request: any Host, Origin or Content-Length goes as given."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    connection.putrequest(method, path, skip_host="Host" in headers)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    is_json = response.headers.get("Content-Type") == "application/json"
    return response.status, response.headers, json.loads(data) if is_json and data else None  # HEAD: no body


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def written_by_cli(tmp_path: Path, image: Image.Image | Path, *flags: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask, cut-out) pixels `birefnet segment --cutout` writes for this image and these flags."""
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    source = image if isinstance(image, Path) else folder / "input.png"
    if not isinstance(image, Path):
        image.save(source)
    assert cli(["segment", str(source), "--out", str(folder / "out"), "--cutout", "--quiet", *flags]) == 0
    stem = source.stem
    return (
        np.asarray(Image.open(folder / "out" / f"{stem}.png")),
        np.asarray(Image.open(folder / "out" / f"{stem}_cutout.png")),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("server"), "--max-upload-mb", "2", "--max-megapixels-in", "1")
    yield server
    server.stop()


def _inputs() -> dict[str, Image.Image]:
    rgb = Image.open(EXAMPLE).convert("RGB")
    grey16 = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))  # mode I;16
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    return {"rgb": rgb, "grey": rgb.convert("L"), "grey16": grey16, "rgba": rgba, "palette": palette}


@pytest.mark.parametrize("mode", ["rgb", "grey", "grey16", "rgba", "palette"])
def test_mask_and_cutout_equal_what_the_cli_writes(server, tmp_path, mode):
    image = _inputs()[mode]
    mask, cutout = written_by_cli(tmp_path, image)
    status, kind, body = call(server, "/v1/segment", [("image", png(image))])
    assert status == 200 and kind == "image/png"
    served = Image.open(io.BytesIO(body))
    assert served.mode == "L" and served.size == image.size
    assert np.array_equal(pixels(body), mask)
    status, _, body = call(server, "/v1/segment", [("image", png(image)), ("output", "rgba")])
    assert status == 200 and np.array_equal(pixels(body), cutout)


OPTIONS = {
    "boxes": (
        [("box", "10,10,200,180"), ("box", "300,150,300,300")],
        ["--box", "10,10,200,180", "--box", "300,150,300,300"],
    ),
    "refine": (
        [
            ("threshold", "0.4"),
            ("grow", "3"),
            ("fill_holes", "true"),
            ("guided_radius", "6"),
            ("guided_eps", "0.01"),
            ("feather", "2"),
        ],
        [
            "--threshold",
            "0.4",
            "--grow",
            "3",
            "--fill-holes",
            "--guided-radius",
            "6",
            "--guided-eps",
            "0.01",
            "--feather",
            "2",
        ],
    ),
    "levels+foreground": (
        [("black_point", "0.1"), ("white_point", "0.8"), ("foreground", "true"), ("foreground_radius", "31")],
        ["--black-point", "0.1", "--white-point", "0.8", "--foreground", "--foreground-radius", "31"],
    ),
    "box+grow+resolution": (
        [("box", "100,80,200,200"), ("grow", "40"), ("resolution", "256x192")],
        ["--box", "100,80,200,200", "--grow", "40", "--resolution", "256x192"],
    ),
    "highres": (  # coarse 128x96, then the object's region again at up to 0.1 megapixels
        [("highres", "true"), ("resolution", "128x96"), ("fine_megapixels", "0.1")],
        ["--highres", "--resolution", "128x96", "--fine-megapixels", "0.1"],
    ),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_options_give_the_cli_pixels(server, tmp_path, name):
    fields, flags = OPTIONS[name]
    mask, cutout = written_by_cli(tmp_path, EXAMPLE, *flags)
    upload = EXAMPLE.read_bytes()
    status, _, body = call(server, "/v1/segment", [("image", upload), *fields])
    assert status == 200, body
    assert np.array_equal(pixels(body), mask)
    status, _, body = call(server, "/v1/segment", [("image", upload), ("output", "rgba"), *fields])
    assert status == 200 and np.array_equal(pixels(body), cutout)
    if "box" in dict(fields):  # the promise of --box, over the wire: 0 outside the boxes, grow or not
        inside = np.zeros(mask.shape, bool)
        for _, text in (f for f in fields if f[0] == "box"):
            x, y, w, h = map(int, text.split(","))
            inside[y : y + h, x : x + w] = True
        assert pixels(body)[..., 3][~inside].max() == 0 and mask[inside].max() > 0


def test_health_models_openapi_page_and_rembg(server):
    status, _, body = call(server, "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["model"] == "demo"
    assert health["device"] == "cpu" and health["dtype"] == "float32" and health["version"]
    models = json.loads(call(server, "/v1/models")[2])
    assert models["loaded"] == "demo" and {"name", "short", "downloaded"} <= set(models["known"][0])
    assert "/v1/segment" in json.loads(call(server, "/openapi.json")[2])["paths"]
    status, kind, body = call(server, "/")
    assert status == 200 and kind.startswith("text/html") and b"/v1/segment" in body
    upload = EXAMPLE.read_bytes()
    mask = call(server, "/v1/segment", [("image", upload)])[2]
    cutout = call(server, "/v1/segment", [("image", upload), ("output", "rgba")])[2]
    status, _, body = call(server, "/api/remove", [("file", upload), ("om", "true"), ("model", "u2net")])
    assert status == 200 and np.array_equal(pixels(body), pixels(mask))
    status, _, body = call(server, "/api/remove", [("file", upload), ("a", "true"), ("ppm", "true")])
    assert status == 200 and np.array_equal(pixels(body), pixels(cutout))
    status, _, body = call(server, "/api/remove", [("image", upload)])  # /v1/segment's name for it
    assert status == 400 and json.loads(body)["error"].endswith("this request sent image")
    status, _, body = call(server, "/api/remove", [("file", upload), ("om", "true"), ("om", "false")])
    assert status == 400 and json.loads(body)["error"] == "field(s) om sent more than once; send each once"


def test_head_is_answered_where_get_is(server):
    """Health checkers and `curl -I` send HEAD: the GET answer's status and headers, no body (it was a 405)."""
    for path in ("/health", "/v1/models", "/", "/krita-plugin.zip"):
        got, got_headers, _ = exchange(server, "GET", path, {"Host": server.host})
        status, headers, answer = exchange(server, "HEAD", path, {"Host": server.host})
        assert status == got == 200 and answer is None, path
        assert headers["Content-Type"] == got_headers["Content-Type"], path
    status, headers, _ = exchange(server, "HEAD", "/v1/segment", {"Host": server.host})
    assert status == 405 and headers["Allow"] == "POST"
    assert "HEAD" not in json.dumps(json.loads(call(server, "/openapi.json")[2])["paths"]).upper()
    assert "Traceback" not in server.log()


def test_an_empty_field_means_its_default_as_in_rembg(server):
    """rembg's server (FastAPI forms) reads an empty form field as not sent, and HTML forms and scripts
    (`-F box=$BOX`) send blank ones: so here, for every field; an empty `box` was a 400 (box '')."""
    upload = EXAMPLE.read_bytes()
    plain = call(server, "/v1/segment", [("image", upload)])[2]
    for empty in ("box", "threshold", "output", "weights", "resolution", "grow", "fill_holes", "highres"):
        status, _, body = call(server, "/v1/segment", [("image", upload), (empty, "")])
        assert status == 200 and body == plain, (empty, body)
    status, _, body = call(server, "/v1/segment", [("image", upload), ("box", ""), ("box", "10,10,200,180")])
    assert status == 200 and body == call(server, "/v1/segment", [("image", upload), ("box", "10,10,200,180")])[2]
    cutout = call(server, "/api/remove", [("file", upload)])[2]
    assert call(server, "/api/remove", [("file", upload), ("om", ""), ("model", ""), ("a", "")])[2] == cutout


def test_listening_on_all_addresses_prints_an_address_to_open(tmp_path):
    """On 0.0.0.0 the ready line named http://0.0.0.0:PORT, which no browser opens: it names this machine's
    loopback address, and how other machines reach it."""
    server = Server(tmp_path / "wildcard", "--host", "0.0.0.0", "--allow-remote", "--token", TOKEN)
    try:
        port = server.url.rsplit(":", 1)[1]
        assert server.url == f"http://127.0.0.1:{port}"
        assert call(server, "/health", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        line = next(line for line in server.log().splitlines() if "birefnet: serving" in line)
        assert "(token required); other machines use this machine's name or address" in line
        assert line.endswith(f":{port}, with the token")
    finally:
        server.stop()


def _heic(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="HEIF", **options)
    return buffer.getvalue()


def test_heic_uploads_are_read_with_the_pictures_extra(server, tmp_path):
    """iPhone photos are HEIC: with the `pictures` extra they are segmented as `birefnet segment` reads the
    file (a portrait photo stored sideways comes back upright), within the same pixel limit (413 before
    decoding). JPEG XL is refused: its decoder decodes the whole picture before its size is known."""
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    sideways = Image.Exif()
    sideways[ExifTags.Base.Orientation] = 6
    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(_heic(Image.open(EXAMPLE), exif=sideways.tobytes()))
    mask, cutout = written_by_cli(tmp_path, photo)
    assert mask.shape == (512, 384)  # upright: the example is 512x384 stored sideways
    for output, expected in (("mask", mask), ("rgba", cutout)):
        status, kind, body = call(server, "/v1/segment", [("image", photo.read_bytes()), ("output", output)])
        assert status == 200 and kind == "image/png", body
        assert np.array_equal(pixels(body), expected)
    status, _, body = call(server, "/api/remove", [("file", photo.read_bytes())])
    assert status == 200 and np.array_equal(pixels(body), cutout)
    status, _, body = call(server, "/v1/segment", [("image", _heic(Image.new("RGB", (1500, 1000))))])
    assert status == 413 and "1500x1000 (1.5 megapixels)" in json.loads(body)["error"]
    pytest.importorskip("pillow_jxl")
    jxl = io.BytesIO()
    Image.new("RGB", (64, 48)).save(jxl, format="JXL")
    status, _, body = call(server, "/v1/segment", [("image", jxl.getvalue())])
    assert status == 415 and json.loads(body)["error"].startswith("JPEG XL uploads are not read: its decoder")
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("kind", ["AVIF", "GIF"])
def test_avif_and_gif_uploads_are_read_as_the_cli_reads_them(server, tmp_path, kind):
    """Browsers save AVIF and GIF pictures; both were 'not an image this server reads'. The same pixel
    limit holds (413 from the header, before decoding)."""
    if kind == "AVIF" and "AVIF" not in Image.registered_extensions().values():
        pytest.skip("this Pillow has no AVIF decoder")
    picture = tmp_path / f"picture.{kind.lower()}"
    Image.open(EXAMPLE).convert("RGB").save(picture, format=kind)
    mask, cutout = written_by_cli(tmp_path, picture)
    for output, expected in (("mask", mask), ("rgba", cutout)):
        status, kind_, body = call(server, "/v1/segment", [("image", picture.read_bytes()), ("output", output)])
        assert status == 200 and kind_ == "image/png", body
        assert np.array_equal(pixels(body), expected)
    large = io.BytesIO()
    Image.new("RGB", (1500, 1000)).save(large, format=kind)
    status, _, body = call(server, "/v1/segment", [("image", large.getvalue())])
    assert status == 413 and "1500x1000 (1.5 megapixels)" in json.loads(body)["error"]


def test_heic_without_the_pictures_extra_gets_415_naming_it(tmp_path):
    """Without pillow-heif a HEIC upload was 'not an image this server reads': it names what to install."""
    header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"  # a HEIC file's first box
    server = Server(tmp_path / "no-extra", without=("pillow_heif", "pillow_jxl"))
    try:
        for path, field in (("/v1/segment", "image"), ("/api/remove", "file")):
            status, _, body = call(server, path, [(field, header + b"\x00" * 64)])
            assert status == 415 and json.loads(body)["error"] == (
                "this server cannot read the upload: HEIC pictures need pillow-heif; install the extra: "
                "pip install 'birefnet-toolkit[pictures]' (or convert it to JPEG or PNG)"
            )
        assert call(server, "/v1/segment", [("image", EXAMPLE.read_bytes())])[0] == 200
    finally:
        server.stop()


def test_rembg_background_colour_from_the_url(server):
    """rembg's POST reads `bgc` (and `extras`) from the URL: the cut-out laid on that colour, alpha composited
    as rembg does; the mask (om=true) is unchanged by it; an empty bgc is none, as in rembg; a colour that
    is not R,G,B[,A] from 0 to 255 is a 400 naming bgc. (It was refused as an unread URL option, and the
    fix the error named, bgc as a form field, is ignored by rembg and here: a transparent cut-out.)"""
    upload = [("file", EXAMPLE.read_bytes())]
    status, _, body = call(server, "/api/remove", upload)
    cutout = Image.open(io.BytesIO(body))
    status, kind, body = call(server, "/api/remove?bgc=20,200,40,255&extras=%7B%7D", upload)
    assert status == 200 and kind == "image/png", body
    laid = Image.alpha_composite(Image.new("RGBA", cutout.size, (20, 200, 40, 255)), cutout)
    assert np.array_equal(pixels(body), np.asarray(laid)) and pixels(body)[..., 3].min() == 255
    assert np.array_equal(pixels(call(server, "/api/remove?bgc=20,200,40", upload)[2]), np.asarray(laid))
    assert call(server, "/api/remove?bgc=", upload)[2] == call(server, "/api/remove", upload)[2]
    mask = call(server, "/api/remove", [*upload, ("om", "true")])[2]
    assert call(server, "/api/remove?bgc=20,200,40,255", [*upload, ("om", "true")])[2] == mask
    for colour in ("red", "1,2", "0,0,256,255", "1,2,3,4,5"):
        status, _, body = call(server, f"/api/remove?bgc={colour}", upload)
        assert status == 400 and json.loads(body)["error"].startswith(f"bgc '{colour}': ")


def _bad_requests():
    good = EXAMPLE.read_bytes()
    image = png(Image.open(EXAMPLE))
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")  # 900 megapixels in ~100 kB
    big = png(Image.new("L", (1500, 1000)))  # 1.5 megapixels, over the test server's 1
    return {
        "not an image": ([("image", b"hello, this is text")], 400, "not an image"),
        "truncated file": ([("image", image[: len(image) // 2])], 400, "truncated"),
        "header cut short": ([("image", image[:20])], 400, "cut short or damaged"),
        "jpeg cut in its header": ([("image", good[:300])], 400, "cut short or damaged"),
        "zero bytes": ([("image", b"")], 400, "empty"),
        "missing image": ([("output", "mask")], 400, "image"),
        "the image under rembg's name": (
            [("file", good)],
            400,
            "field image is missing: send the image as file field image",
        ),
        "another name, named back": ([("picture", good), ("output", "rgba")], 400, "this request sent output, picture"),
        "the image as an empty text field (-F image= without @)": ([("image", "")], 400, "field image is empty"),
        "two images, one answer": ([("image", good), ("image", image)], 400, "image sent more than once"),
        "output twice": ([("image", good), ("output", "rgba"), ("output", "mask")], 400, "only box may repeat"),
        "unknown weights": ([("image", good), ("weights", "../../etc/passwd")], 400, "not offered"),
        "bad box": ([("image", good), ("box", "1,2,3")], 400, "x,y,w,h"),
        "empty box": ([("image", good), ("box", "10,10,0,5")], 400, "positive"),
        "box outside the image": ([("image", good), ("box", "600,10,50,50")], 400, "outside"),
        "unknown field": ([("image", good), ("treshold", "0.5")], 400, "treshold"),
        "wrong field type": ([("image", good), ("grow", "a lot")], 400, "grow"),
        "bad output": ([("image", good), ("output", "jpeg")], 400, "output"),
        "bad resolution": ([("image", good), ("resolution", "100x100")], 400, "multiples of 32"),
        "bad refinement": ([("image", good), ("black_point", "0.6"), ("white_point", "0.2")], 400, "black_point"),
        "highres with a box": ([("image", good), ("highres", "true"), ("box", "1,2,30,40")], 400, "do not combine"),
        "fine pass of no area": ([("image", good), ("highres", "true"), ("fine_megapixels", "0")], 400, "positive"),
        "too many pixels": ([("image", big)], 413, "megapixels"),
        "decompression bomb": ([("image", bomb.getvalue())], 413, "megapixels"),
        "a URL instead of a file": ([("image", "https://example.com/cat.png")], 400, "-F image=@photo.png"),
        "infinite box": ([("image", good), ("box", "inf,0,10,10")], 400, "x,y,w,h in pixels"),
        "box beyond floats": ([("image", good), ("box", "1e400,0,10,10")], 400, "x,y,w,h in pixels"),
        "box of nan": ([("image", good), ("box", "nan,0,10,10")], 400, "x,y,w,h"),
        "infinite feather": ([("image", good), ("feather", "inf")], 400, "finite"),
        "nan guided_eps": ([("image", good), ("guided_eps", "nan")], 400, "guided_eps"),
        "infinite guided_eps": ([("image", good), ("guided_eps", "inf")], 400, "finite"),
        "infinite fine pass": ([("image", good), ("highres", "true"), ("fine_megapixels", "inf")], 400, "finite"),
        "grow past a long int": ([("image", good), ("grow", "10000000000")], 400, "up to 64"),
        "grow of thousands": ([("image", good), ("grow", "2000")], 400, "up to 64"),
        "shrink of thousands": ([("image", good), ("grow", "-2000")], 400, "up to 64"),
        "huge guided_radius": ([("image", good), ("guided_radius", "1000")], 400, "up to 32"),
        "huge feather": ([("image", good), ("feather", "1e30")], 400, "up to 256"),
        "huge foreground_radius": ([("image", good), ("foreground_radius", "100000")], 400, "up to 256"),
        "guided_eps of nothing": ([("image", good), ("guided_radius", "4"), ("guided_eps", "1e-30")], 400, "1e-06"),
        "guided_eps past floats": ([("image", good), ("guided_radius", "4"), ("guided_eps", "1e39")], 400, "to 1"),
        "working size past 2048²": ([("image", good), ("resolution", "4096")], 400, "up to 4.2 megapixels"),
        "fine pass past 2048²": ([("image", good), ("highres", "true"), ("fine_megapixels", "9")], 400, "up to 4.2"),
        "a box per pass, 33": ([("image", good)] + [("box", "1,1,20,20")] * 33, 400, "up to 32"),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(server, case):
    fields, expected, words = _bad_requests()[case]
    status, kind, body = call(server, "/v1/segment", fields)
    assert status == expected, body
    assert kind == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"error"} and "\n" not in answer["error"] and words in answer["error"]
    assert call(server, "/health")[0] == 200
    assert not any(server.tmp.iterdir()), "a failed request left files behind"
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("kind", ["image/jpeg", "application/json", "application/octet-stream"])
def test_a_body_that_is_not_a_form_gets_415_naming_multipart(server, kind):
    """A script posting the photo's bytes (or JSON) as the body, not in a form, is told so, not that the
    field image is missing (which it believes it sent)."""
    body = EXAMPLE.read_bytes() if kind != "application/json" else b'{"image": "..."}'
    for path, field in (("/v1/segment", "image"), ("/api/remove", "file")):
        headers = {"Host": server.host, "Content-Type": kind, "Content-Length": str(len(body))}
        status, _, answer = exchange(server, "POST", path, headers, body)
        assert status == 415, answer
        assert answer["error"] == (
            f"the body is {kind}; send a multipart/form-data form with the image as file field {field} "
            f"(curl: -F {field}=@photo.png)"
        )
    assert "Traceback" not in server.log()


def test_too_large_uploads_are_refused_before_they_are_read(server):
    """The declared length decides: the 413 comes back before the client has sent a byte of the body."""
    connection = http.client.HTTPConnection(server.host, timeout=60)
    connection.putrequest("POST", "/v1/segment")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(3 * 2**20))  # the test server takes up to 2 MB
    connection.endheaders()
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 413 and "up to 2 MB (--max-upload-mb)" in answer["error"]
    assert call(server, "/health")[0] == 200


def test_chunked_uploads_urls_and_unknown_routes_are_refused(server):
    connection = http.client.HTTPConnection(server.host, timeout=60)
    connection.request(
        "POST",
        "/v1/segment",
        body=iter([b"--x\r\n"]),
        encode_chunked=True,
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    status, _, body = call(server, "/api/remove?url=http://169.254.169.254/latest")
    assert status == 400 and "never fetches URLs" in json.loads(body)["error"]
    status, _, body = call(server, "/v2/whatever")
    assert status == 404 and json.loads(body) == {"error": "no such endpoint: GET /v2/whatever"}
    status, _, body = call(server, "/v1/segment", method="PUT")
    assert status == 405 and json.loads(body) == {"error": "PUT /v1/segment is not served; use POST"}
    for path in ("/v1/segment?output=rgba", "/api/remove?om=true"):  # rembg reads om from the form only
        status, _, body = call(server, path, [("image" if "v1" in path else "file", EXAMPLE.read_bytes())])
        assert status == 400 and "are not read; send them as form fields" in json.loads(body)["error"]


def test_foreign_origin_and_host_are_refused(server):
    status, _, body = call(server, "/health", headers={"Origin": "https://evil.example"})
    assert status == 403 and "--cors https://evil.example" in json.loads(body)["error"]
    status, _, body = call(server, "/v1/segment", [("image", EXAMPLE.read_bytes())], headers={"Origin": "null"})
    assert status == 403 and "a file:// page" in json.loads(body)["error"]  # no --cors could allow it
    status, _, body = call(server, "/health", headers={"Host": "attacker.example:80"})
    assert status == 403 and "DNS rebinding" in json.loads(body)["error"]
    assert call(server, "/health", headers={"Origin": server.url})[0] == 200  # the server's own page
    assert call(server, "/health", headers={"Host": f"localhost:{server.url.rsplit(':', 1)[1]}"})[0] == 200


def test_malformed_host_and_origin_are_refused(server):
    """Headers urlsplit cannot parse (an unclosed IPv6 bracket) are the client's mistake, not a 500."""
    status, _, answer = exchange(server, "GET", "/health", {"Host": "[bad"})
    assert status == 400 and "Host" in answer["error"] and "malformed" in answer["error"]
    status, _, answer = exchange(server, "GET", "/health", {"Host": server.host, "Origin": "http://[bad"})
    assert status == 403 and "http://[bad" in answer["error"]
    assert call(server, "/health")[0] == 200
    assert "Traceback" not in server.log()


def raw_form(server, path: str, body: bytes, split: int = 0) -> tuple[int, dict | None]:
    """(status, JSON or None) of a form with boundary X written byte for byte on a socket, its Content-Length
    that of `body`; `split`: its last this many bytes sent apart, after a pause (two reads for the server)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: multipart/form-data; boundary=X\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = server.host.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head + body[: len(body) - split])
        if split:
            time.sleep(0.3)
            sock.sendall(body[len(body) - split :])
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
    is_json = response.headers.get("Content-Type") == "application/json"
    return response.status, json.loads(data) if is_json else None


@pytest.mark.parametrize("path, field", [("/v1/segment", "image"), ("/api/remove", "file")])
def test_a_form_cut_short_gets_400_naming_its_closing_boundary(server, path, field):
    """A body that stops before the form's closing --X-- (cut short with a Content-Length to match, or
    written by hand without that last line) was told "field image is missing": python-multipart takes it as
    complete and drops the unfinished part. Forms that end with --X--, with or without the CRLF after it,
    with an epilogue, or with --X-- split across two reads, are served as before."""
    part = (
        f'--X\r\nContent-Disposition: form-data; name="{field}"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + EXAMPLE.read_bytes()
    cut = {
        "no closing line": part + b"\r\n",
        "no CRLF either": part,
        "cut in the image": part[: len(part) // 2],
        "cut in the closing line": part + b"\r\n--X-",
        "cut in the part's headers": part[:30],
    }
    expected = (
        "the form ends before its closing boundary --X--: the request was cut short, or its client left out that "
        "last line; send the whole form, ending with --X--"
    )
    for case, body in cut.items():
        for split in (0, 3):
            assert raw_form(server, path, body, split) == (400, {"error": expected}), case
    whole = (part + b"\r\n--X--", part + b"\r\n--X--\r\n", part + b"\r\n--X--\r\nan epilogue\r\n")
    for body in whole:
        for split in (0, 3, 5):  # --X-- split across two reads of the server
            assert raw_form(server, path, body, split) == (200, None)
    if shutil.which("curl"):
        command = ["curl", "-s", "-F", f"{field}=@{EXAMPLE}", "-o", os.devnull, "-w", "%{http_code}"]
        assert subprocess.run([*command, server.url + path], capture_output=True, text=True).stdout == "200"
    assert call(server, "/health")[0] == 200
    assert not any(server.tmp.iterdir()), "a failed request left files behind"
    assert "Traceback" not in server.log()


def test_concurrent_requests_are_all_answered_alike(server):
    upload = EXAMPLE.read_bytes()
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: call(server, "/v1/segment", [("image", upload), ("output", "rgba")]), range(8))
        )
    assert all(status == 200 for status, _, _ in answers)
    assert len({body for _, _, body in answers}) == 1


def _send_and_leave(server, fields) -> http.client.HTTPConnection:
    """A request sent whole whose client will not wait for the answer (`close()` it: Krita's Cancel)."""
    body, kind = multipart(fields)
    connection = http.client.HTTPConnection(server.host, timeout=60)
    connection.request("POST", "/v1/segment", body=body, headers={"Content-Type": kind})
    return connection


def _waiting(server) -> int:
    return json.loads(call(server, "/health")[2])["waiting"]


def _until(condition, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_requests_whose_client_left_leave_the_line_and_a_full_line_refuses_before_decoding(tmp_path):
    """Cancelled requests never run: the ones behind them do not wait for them. A full line answers 503
    before the upload is decoded (an undecodable upload would otherwise get its 400 first), so waiting
    requests cost no decoded-image memory."""
    server = Server(tmp_path / "line", "--max-queue", "4")
    try:
        slow = [("image", png(Image.open(EXAMPLE))), ("resolution", "1024")]  # seconds on the CPU
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, server, "/v1/segment", slow)
            _until(lambda: _waiting(server) == 1)
            leaving = [_send_and_leave(server, slow) for _ in range(3)]
            _until(lambda: _waiting(server) == 4)
            body, kind = multipart([("image", b"\x89PNG\r\n\x1a\n damaged")])
            form = {"Host": server.host, "Content-Type": kind, "Content-Length": str(len(body))}
            status, headers, answer = exchange(server, "POST", "/v1/segment", form, body)
            assert status == 503 and "busy" in answer["error"]
            assert headers["Retry-After"] == "2"  # clients that retry wait, not meet the full line again at once
            for connection in leaving:
                connection.close()
            _until(lambda: _waiting(server) == 1)
            assert not first.done()  # the three left the line while the first still ran
            assert first.result()[0] == 200
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_a_full_line_refuses_before_the_upload_is_read(tmp_path):
    """FastAPI reads a form whole (the upload spooled to disk) before the route runs, so a full line's 503
    came only after the last byte of a 50 MB upload. It now comes before the body is read: to a client that
    sent only the headers; a client that sends all first (http.client, requests) reads it after, on a
    connection that serves on (uvicorn discards the rest); curl, which waits for 100 Continue before a large
    body, stops sending."""
    server = Server(tmp_path / "full", "--max-queue", "1")
    size = 50 * 2**20
    photo = tmp_path / "large.png"
    photo.write_bytes(bytes(size))
    body, kind = multipart([("image", photo.read_bytes())])
    try:
        slow = [("image", png(Image.open(EXAMPLE))), ("resolution", "1024")]  # seconds on the CPU
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, server, "/v1/segment", slow)
            _until(lambda: _waiting(server) == 1)
            connection = http.client.HTTPConnection(server.host, timeout=20)  # it waited for the body
            connection.putrequest("POST", "/v1/segment")
            connection.putheader("Content-Type", kind)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders()
            response = connection.getresponse()
            assert response.status == 503 and response.headers["Retry-After"] == "2"
            assert "busy" in json.loads(response.read())["error"]
            connection.close()

            connection = http.client.HTTPConnection(server.host, timeout=60)
            rembg = body.replace(b'name="image"', b'name="file"', 1)
            connection.request("POST", "/api/remove", body=rembg, headers={"Content-Type": kind})
            response = connection.getresponse()
            assert response.status == 503 and response.headers["Retry-After"] == "2"
            assert "busy" in json.loads(response.read())["error"]
            connection.request("GET", "/health")  # the same connection
            assert connection.getresponse().status == 200
            connection.close()

            if shutil.which("curl"):
                command = ["curl", "-s", "-F", f"image=@{photo}", "-w", "\n%{http_code} %{size_upload}"]
                output = subprocess.run([*command, server.url + "/v1/segment"], capture_output=True, text=True)
                answer, sent = output.stdout.rsplit("\n", 1)
                status, uploaded = sent.split()
                assert status == "503" and "busy" in json.loads(answer)["error"]
                assert int(uploaded) < size, "curl sent the whole upload"
            assert not first.done()  # the line was full throughout
            assert first.result()[0] == 200
        assert not any(server.tmp.iterdir())
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def _virtual_memory(pid: int, field: str = "VmSize") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's peak memory from /proc")
def test_requests_waiting_in_line_hold_no_decoded_image(tmp_path):
    """Five 32-megapixel photos (96 MB each, decoded) wait while the model runs a slow request: only the
    next in line is decoded (while one runs, the next decodes: two at most), so the server's peak memory
    grows by about two photos, not five (1.2 GB before). They name offered weights that fail to load, so
    each is answered (400) as soon as its turn comes. The baseline peak has the slow request and one
    photo's decode, each on its own."""
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint" * 64)
    server = Server(tmp_path / "decoded", "--allow-weights", str(broken))
    try:
        slow = [("image", png(Image.open(EXAMPLE))), ("resolution", "1024")]
        photo = [
            ("image", png(Image.linear_gradient("L").resize((8000, 4000)).convert("RGB"))),
            ("weights", broken.name),
        ]
        decoded = 8000 * 4000 * 3
        assert call(server, "/v1/segment", slow)[0] == 200
        assert call(server, "/v1/segment", [*photo, ("output", "jpeg")])[0] == 400  # decoded, then refused
        before = _virtual_memory(server.process.pid, "VmHWM")
        with ThreadPoolExecutor(6) as pool:
            first = pool.submit(call, server, "/v1/segment", slow)
            _until(lambda: _waiting(server) == 1)
            photos = [pool.submit(call, server, "/v1/segment", photo) for _ in range(5)]
            assert first.result()[0] == 200
            for answer in photos:
                status, _, body = answer.result()
                assert status == 400 and "weights could not be loaded" in json.loads(body)["error"]
        growth = _virtual_memory(server.process.pid, "VmHWM") - before
        assert growth < 3.5 * decoded, f"the peak grew by {growth / 2**20:.0f} MB"
        assert "Traceback" not in server.log()
    finally:
        server.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps a running process's memory with prlimit")
def test_a_request_too_large_for_the_memory_left_gets_503_and_the_next_one_runs(tmp_path):
    """A real allocation failure: the running server's address space is capped 1.5 GB above what it
    uses after a first request, then asked for a 2048² working size (2.4 GB for this model), the most
    the server takes."""
    import resource

    server = Server(tmp_path / "memory")
    try:
        upload = [("image", EXAMPLE.read_bytes())]
        status, _, first = call(server, "/v1/segment", upload)
        assert status == 200
        limit = _virtual_memory(server.process.pid) + 1_000_000_000
        resource.prlimit(server.process.pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        status, kind, body = call(server, "/v1/segment", [*upload, ("resolution", "2048")])
        assert status == 503 and kind == "application/json", body
        error = json.loads(body)["error"]
        assert "ran out of memory" in error and "2048x2048" in error and "smaller resolution" in error
        assert call(server, "/v1/segment", upload) == (200, "image/png", first)  # the same answer as before
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_token(tmp_path):
    server = Server(tmp_path / "token", "--token", TOKEN, "--cors", "https://editor.example")
    try:
        status, _, body = call(server, "/health")
        assert status == 401 and "Bearer" in json.loads(body)["error"]
        assert call(server, "/health", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(server, "/health", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, _, _ = call(
            server, "/v1/segment", [("image", EXAMPLE.read_bytes())], headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200
        assert call(server, "/")[0] == 200  # the page itself asks for the token
        assert call(server, "/krita-plugin.zip")[0] == 200  # public code the page links to (a link sends no token)
        status, _, _ = call(
            server, "/health", headers={"Authorization": f"Bearer {TOKEN}", "Origin": "https://editor.example"}
        )
        assert status == 200  # --cors lets that site in (still with the token)
    finally:
        server.stop()
    assert "server stopped" in server.log()  # SIGTERM: a graceful stop


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--host", "0.0.0.0"], "--allow-remote"),
        (["--host", "0.0.0.0", "--allow-remote"], "needs a token"),
        (["--allow-weights", "no_such_thing"], "not a known name"),
        (["--token", "pässwort"], "printable ASCII"),  # headers carry no other text: it could never match
    ],
)
def test_unsafe_or_impossible_setups_refuse_to_start(flags, words):
    env = {k: v for k, v in os.environ.items() if k != "BIREFNET_SERVER_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "birefnet", "serve", "--port", "0", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("birefnet:")]
    assert words in line


def test_requested_weights_are_the_weights_served(tmp_path):
    """A request gets the weights it names, whichever model the request before it loaded: the default by
    its name (here demo), the offered file by its name, twice in a row too."""
    from safetensors.torch import load_file, save_file

    from birefnet.loading import EMBEDDED_WEIGHTS

    other = tmp_path / "other.safetensors"
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in load_file(EMBEDDED_WEIGHTS).items()}, other)
    server = Server(tmp_path / "weights", "--allow-weights", str(other))
    try:
        upload = [("image", EXAMPLE.read_bytes())]
        status, _, demo = call(server, "/v1/segment", upload)
        assert status == 200
        answers = []
        for name in ("other.safetensors", "other.safetensors", "demo", "other.safetensors", "demo", "demo"):
            status, _, body = call(server, "/v1/segment", [*upload, ("weights", name)])
            assert status == 200, body
            assert json.loads(call(server, "/health")[2])["model"] == name
            answers.append(body)
        assert answers[0] != demo and answers[0] == answers[1] == answers[3]
        assert answers[2] == answers[4] == answers[5] == demo
    finally:
        server.stop()


def test_cors_headers_on_guard_errors_preflight_and_a_proxy(tmp_path):
    """With --cors, the page of that origin can read the 401/411/413 it gets and its preflight passes; a
    foreign page's preflight is a JSON 403. Behind a reverse proxy set up as docs/server.md says (Host
    127.0.0.1 upstream, --cors the public origin), the page's POST is served; nginx's default Host for an
    `upstream` block is refused."""
    site = "https://segment.example.com"
    server = Server(tmp_path / "cors", "--token", TOKEN, "--cors", site, "--max-upload-mb", "1")
    try:
        host, allowed = {"Host": server.host}, {"Host": server.host, "Origin": site}
        status, headers, answer = exchange(server, "GET", "/health", allowed)
        assert status == 401 and "Bearer" in answer["error"]
        assert headers["access-control-allow-origin"] == site
        authorised = {**allowed, "Authorization": f"Bearer {TOKEN}"}
        big = {**authorised, "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(2 * 2**20)}
        status, headers, answer = exchange(server, "POST", "/v1/segment", big)
        assert status == 413 and "--max-upload-mb" in answer["error"]
        assert headers["access-control-allow-origin"] == site
        chunked = {**authorised, "Content-Type": "multipart/form-data; boundary=x", "Transfer-Encoding": "chunked"}
        status, headers, answer = exchange(server, "POST", "/v1/segment", chunked, b"0\r\n\r\n")
        assert status == 411 and headers["access-control-allow-origin"] == site
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        status, headers, _ = exchange(server, "OPTIONS", "/v1/segment", {**allowed, **preflight})
        assert status == 200 and headers["access-control-allow-origin"] == site
        foreign = {**host, "Origin": "https://evil.example", **preflight}
        status, headers, answer = exchange(server, "OPTIONS", "/v1/segment", foreign)
        assert status == 403 and "--cors https://evil.example" in answer["error"]
        assert "access-control-allow-origin" not in headers
        body, kind = multipart([("image", EXAMPLE.read_bytes())])
        proxied = {"Host": "127.0.0.1", "Origin": site, "Authorization": f"Bearer {TOKEN}"}
        form = {**proxied, "Content-Type": kind, "Content-Length": str(len(body))}
        status, headers, _ = exchange(server, "POST", "/v1/segment", form, body)
        assert status == 200 and headers["Content-Type"] == "image/png"
        status, _, answer = exchange(server, "GET", "/health", {**proxied, "Host": "birefnet"})
        assert status == 403 and "DNS rebinding" in answer["error"]
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_megapixel_limits_above_pillows_own_are_the_servers(tmp_path):
    """--max-megapixels-in decides, also above Pillow's own decompression-bomb limit (~179 megapixels):
    a 1-bit PNG of 200 megapixels (a few kB) is decoded (then refused for its `output`, so no model
    runs), one of 300 megapixels gets the 413 naming its size."""
    server = Server(tmp_path / "pixels", "--max-megapixels-in", "250")
    try:
        for size, expected, words in (((20000, 10000), 400, "output"), ((20000, 15000), 413, "300.0 megapixels")):
            upload = png(Image.new("1", size))
            status, _, body = call(server, "/v1/segment", [("image", upload), ("output", "jpeg")])
            assert status == expected and words in json.loads(body)["error"], body
        assert "Traceback" not in server.log()
    finally:
        server.stop()


@contextlib.contextmanager
def _in_this_process(worker, grace: float | None = None):
    """The app on a free port of 127.0.0.1, served by uvicorn in a thread of this process (so a test can
    reach into its model); yields what `call` takes, and `stop()`, which stops the server as Ctrl+C does
    (requests in flight get `grace` seconds, then are cancelled)."""
    import uvicorn

    from birefnet.server.app import create_app
    from birefnet.server.run import bind
    from birefnet.server.settings import Settings

    sock = bind("127.0.0.1", 0)
    settings = Settings(port=sock.getsockname()[1])
    config = uvicorn.Config(create_app(settings, worker), log_level="critical", timeout_graceful_shutdown=grace)
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]})
    thread.start()

    def stop():
        runner.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"

    try:
        while not runner.started:
            time.sleep(0.05)
        yield SimpleNamespace(url=settings.url, host=settings.url.removeprefix("http://"), stop=stop)
    finally:
        stop()
        sock.close()


def test_decoding_leaves_the_event_loop_free(monkeypatch):
    """An upload is decoded in the thread pool, so /health (and every other request) is answered while a
    large photo decodes. The app runs in this process with a decoder that waits until /health answered."""
    from birefnet.server import app as app_module
    from birefnet.server.errors import RequestError

    started, answered = threading.Event(), threading.Event()

    def slow_decode(data, max_pixels):
        started.set()
        raise RequestError(400, f"health answered during the decode: {answered.wait(10)}")

    monkeypatch.setattr(app_module, "decode_image", slow_decode)
    worker = SimpleNamespace(
        name="demo",
        device="cpu",
        dtype="torch.float32",
        backend="torch",
        waiting=0,
        refusal=lambda: None,
        place=contextlib.nullcontext,
        turn=contextlib.nullcontext,
    )
    try:
        with _in_this_process(worker) as server, ThreadPoolExecutor(1) as pool:
            upload = pool.submit(call, server, "/v1/segment", [("image", b"a large photo")])
            assert started.wait(30)
            assert call(server, "/health")[0] == 200
            answered.set()
            status, _, body = upload.result()
        assert status == 400 and json.loads(body)["error"] == "health answered during the decode: True"
    finally:
        answered.set()


@contextlib.contextmanager
def _watched_passes(worker, holds=()):
    """The worker's model with each forward pass's submodules counted (`watch.passes`, one count per pass) and
    the model's thread held at the (pass, submodule) points in `holds` (pass 1 is the first; submodule 0 is
    before the pass's first) until the test sets `watch.release[point]` (`watch.reached[point]` is set there).
    These hooks run before the server's at each module."""
    model = worker.model
    watch = SimpleNamespace(
        passes=[], reached={p: threading.Event() for p in holds}, release={p: threading.Event() for p in holds}
    )

    def wait_at(point):
        if point in watch.reached:
            watch.reached[point].set()
            watch.release[point].wait(60)

    def started(module, args):
        watch.passes.append(0)
        wait_at((len(watch.passes), 0))

    def counted(module, args):
        watch.passes[-1] += 1
        wait_at((len(watch.passes), watch.passes[-1]))

    hooks = [model.register_forward_pre_hook(started)]
    hooks += [module.register_forward_pre_hook(counted) for module in model.modules() if module is not model]
    try:
        yield watch
    finally:
        for release in watch.release.values():
            release.set()
        for hook in hooks:
            hook.remove()
        worker.close()


def _cpu_worker():
    from birefnet.server.weights import Catalog
    from birefnet.server.worker import Worker

    return Worker(None, "cpu", "float32", Catalog(()), max_queue=4)


def test_a_request_whose_client_leaves_while_the_model_works_on_it_stops_within_its_pass():
    """Krita's Cancel of a coarse-to-fine request on a CPU: the model's thread stops inside the coarse pass
    (not after it, nor after the fine pass), so the next request starts at once and gets the answer it gets on
    an idle server. The test holds the coarse pass at its start until the server has seen the client go."""
    highres = [("image", png(Image.open(EXAMPLE).resize((1600, 1200)))), ("resolution", "256"), ("highres", "true")]
    quick = [("image", EXAMPLE.read_bytes()), ("resolution", "256")]
    worker = _cpu_worker()
    with _watched_passes(worker, holds=[(3, 0)]) as watch, _in_this_process(worker) as server:
        assert call(server, "/v1/segment", highres)[0] == 200
        assert len(watch.passes) == 2  # uncancelled, this request runs a coarse and a fine pass
        leaving = _send_and_leave(server, highres)
        assert watch.reached[(3, 0)].wait(60)  # the cancelled request's first pass begins
        leaving.close()
        _until(lambda: _waiting(server) == 0)  # the server answered nobody (499): the pass is still held
        watch.release[(3, 0)].set()
        status, _, answer = call(server, "/v1/segment", quick)
        assert status == 200
        assert watch.passes[2] == 0 and watch.passes[0] > 100  # stopped before the first submodule of its first pass
        assert len(watch.passes) == 4  # no fine pass: the next pass was the next request's
        assert all(len(module._forward_pre_hooks) == 1 for module in worker.model.modules())  # the server's are gone
    idle = _cpu_worker()
    try:
        with _in_this_process(idle) as server:
            assert call(server, "/v1/segment", quick) == (200, "image/png", answer)
    finally:
        idle.close()


def test_a_server_stopping_stops_the_work_it_cancels():
    """Ctrl+C while the model works on a long request: once the grace time for requests in flight has passed,
    the server cancels the request and its work stops too (before, the model's thread ran it to the end, and
    the server could not exit until then: minutes for a large image on a CPU); its client gets a 503 saying so."""
    worker = _cpu_worker()
    with _watched_passes(worker, holds=[(1, 0)]) as watch, ThreadPoolExecutor(1) as pool:
        with _in_this_process(worker, grace=0.5) as server:
            request = pool.submit(call, server, "/v1/segment", [("image", EXAMPLE.read_bytes())])
            assert watch.reached[(1, 0)].wait(60)
            server.stop()  # the request's task is cancelled after 0.5 s
            watch.release[(1, 0)].set()
            worker.close()  # waits for the model's thread
            assert watch.passes == [0]  # its pass stopped at its first check
            status, kind, body = request.result()
            assert status == 503 and kind == "application/json"  # not a bare 500
            assert json.loads(body)["error"] == "the server is stopping; send the request again once it is back"


def test_progress_of_a_named_request_moves_within_its_passes_until_it_is_answered():
    """A client that names its request (header X-Request-ID) reads how far it is: "waiting" while in line, then the
    share of its work, moving inside each pass on a CPU (timed by the model's last whole pass; the server's first
    request by the small pass the server times as it loads the model), not only between them; 404 once answered.
    The test holds the passes of a coarse-to-fine request part-way through."""
    image = png(Image.open(EXAMPLE).resize((1600, 1200)))
    highres = [("image", image), ("resolution", "256"), ("highres", "true")]
    coarse, fine = (1, 60), (2, 60)  # the 60th submodule of the first and second passes
    worker = _cpu_worker()

    def progress(request_id):
        status, _, body = call(server, f"/v1/progress/{request_id}")
        return status, json.loads(body)

    with _watched_passes(worker, holds=[coarse, fine]) as watch, ThreadPoolExecutor(2) as pool:
        with _in_this_process(worker) as server:
            first = pool.submit(call, server, "/v1/segment", highres, {"X-Request-ID": "first"})
            assert watch.reached[coarse].wait(60)
            status, during_coarse = progress("first")
            second = pool.submit(call, server, "/v1/segment", [("image", image)], {"X-Request-ID": "second"})
            _until(lambda: progress("second")[0] == 200)
            assert progress("second")[1] == {"request_id": "second", "state": "waiting", "progress": 0.0}
            again = call(server, "/v1/segment", [("image", image)], {"X-Request-ID": "first"})
            assert again[0] == 409 and "in use by a request in flight" in json.loads(again[2])["error"]
            bad = call(server, "/api/remove", [("file", image)], {"X-Request-ID": "no spaces"})
            assert bad[0] == 400 and "X-Request-ID" in json.loads(bad[2])["error"]
            watch.release[coarse].set()
            assert watch.reached[fine].wait(60)
            during_fine = progress("first")[1]
            watch.release[fine].set()
            assert first.result()[0] == 200 and second.result()[0] == 200
            gone, answer = progress("first")
    assert status == 200 and during_coarse["state"] == during_fine["state"] == "running"
    assert 0 < during_coarse["progress"] < 0.475 < during_fine["progress"] < 0.95  # half the work per pass
    assert gone == 404 and answer["error"].startswith("no request in flight has X-Request-ID 'first'")


def test_an_openvino_server_converts_at_start_and_runs_other_sizes_in_pytorch(tmp_path, monkeypatch):
    """`birefnet serve --backend openvino` (OpenVINO's runtime is the fastest on CPUs): the checkpoint's working
    size is converted as the server starts, so no request waits minutes for a conversion, and a request at
    another size runs in PyTorch instead of converting; both answer what the PyTorch server answers."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path / "cache"))
    servers = {"openvino": Server(tmp_path / "openvino", "--backend", "openvino"), "torch": Server(tmp_path / "torch")}
    requests = ([("image", EXAMPLE.read_bytes())], [("image", EXAMPLE.read_bytes()), ("resolution", "256")])
    try:
        graphs = sorted(path.name for path in (tmp_path / "cache" / "openvino").glob("*.xml"))
        answers = {
            name: [call(server, "/v1/segment", fields) for fields in requests] for name, server in servers.items()
        }
        backends = {name: json.loads(call(server, "/health")[2])["backend"] for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    log = servers["openvino"].log()
    assert len(graphs) == 1 and graphs[0].endswith("-224x224.xml")  # the demo model's working size, at start
    assert "converting pvt_v2_b0 for 224x224" in log and "on cpu (OpenVINO) at http://" in log
    assert backends == {"openvino": "openvino", "torch": "torch"}
    assert sorted(path.name for path in (tmp_path / "cache" / "openvino").glob("*.xml")) == graphs  # no 256²
    assert log.count("PyTorch runs it") == 1 and "no converted graph for 256x256" in log
    for ours, theirs in zip(answers["openvino"], answers["torch"]):
        assert ours[0] == theirs[0] == 200
        masks = [np.asarray(Image.open(io.BytesIO(answer[2])), dtype=int) for answer in (ours, theirs)]
        assert np.abs(masks[0] - masks[1]).max() <= 1
