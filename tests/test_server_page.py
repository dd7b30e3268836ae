"""The page at / in headless Chromium (Playwright): pick an image, see mask and cut-out, coarse to fine,
its progress while the server works, draw a box (the mask then stays 0 outside it), download the cut-out PNG;
the Krita plug-in link; number inputs that stop where the server's checks do."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from test_krita_plugin import server_accepts
from test_server import EXAMPLE, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    server = Server(tmp_path_factory.mktemp("page_server"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900}, accept_downloads=True)
        page.errors = []
        page.on("pageerror", lambda err: page.errors.append(str(err)))
        page.goto(server.url)
        yield page
        browser.close()
    server.stop()


def _wait_done(page):
    page.wait_for_function(
        "document.body.dataset.state === 'done' || document.body.dataset.state === 'error'", timeout=120000
    )
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")


def _download(page, link: str) -> np.ndarray:
    with page.expect_download() as info:
        page.click(link)
    return np.asarray(Image.open(info.value.path()))


def _library_cutout(**options) -> np.ndarray:
    """The cut-out the library makes of the example with the server's model (the embedded demo)."""
    from birefnet import load_model
    from birefnet.pipeline import cutout_image, finish, segment_image
    from birefnet.refine import Refinement

    image = Image.open(EXAMPLE)
    model = load_model(device="cpu")
    mask, colours = finish(image, segment_image(model, image, **options)[0], Refinement())
    return np.asarray(cutout_image(image, mask, colours))


def test_upload_see_results_draw_a_box_download(page):
    page.set_input_files("#file", str(EXAMPLE))
    _wait_done(page)
    assert page.evaluate("document.getElementById('mask').naturalWidth") == 512
    assert page.evaluate("document.getElementById('cutout').naturalHeight") == 384
    whole = _download(page, "#download-cutout")
    assert whole.shape == (384, 512, 4) and whole[..., 3].max() > 0
    mask = _download(page, "#download-mask")
    assert np.array_equal(mask[..., 0], whole[..., 3])  # the mask shown is the cut-out's alpha

    page.check("#highres")
    _wait_done(page)
    fine = _download(page, "#download-cutout")
    assert np.array_equal(fine, _library_cutout(highres=True)) and not np.array_equal(fine, whole)
    page.uncheck("#highres")
    _wait_done(page)

    canvas = page.locator("#source").bounding_box()
    scale = canvas["width"] / 512
    page.evaluate("document.body.dataset.state = 'drawing'")
    page.mouse.move(canvas["x"] + 20 * scale, canvas["y"] + 20 * scale)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 120 * scale, canvas["y"] + 100 * scale, steps=5)
    page.mouse.move(canvas["x"] + 220 * scale, canvas["y"] + 200 * scale, steps=5)
    page.mouse.up()
    _wait_done(page)
    assert "1 box" in page.inner_text("#status")
    boxed = _download(page, "#download-cutout")
    alpha = boxed[..., 3]
    ys, xs = np.nonzero(alpha)
    assert len(ys) and xs.min() >= 18 and ys.min() >= 18 and xs.max() <= 222 and ys.max() <= 202
    assert not np.array_equal(boxed, whole)
    assert page.is_visible("#krita")  # the Krita plug-in zip is offered
    assert not page.errors, page.errors


def test_number_inputs_stop_where_the_server_does(page):
    """Each number input's range lies within what the server accepts, up to its caps (a radius input ends at
    the cap itself): at the ends of every range the page's request is served, not refused with a 400."""
    from birefnet.server.uploads import MAX_RADIUS

    page.set_input_files("#file", str(EXAMPLE))
    _wait_done(page)
    ranges = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('input[type=number]')]"
        ".map((input) => [input.id, [Number(input.min), Number(input.max)]]))"
    )
    assert set(ranges) == {"threshold", "guided_radius"}
    for name, (low, high) in ranges.items():
        assert server_accepts(name, low) and server_accepts(name, high), (name, low, high)
        assert not server_accepts(name, round(high + 0.01, 2)), (name, high)  # it reaches what the server takes
        if name in MAX_RADIUS:
            assert high == MAX_RADIUS[name]
    for end in (1, 0):  # every input at its maximum, then at its minimum
        for name, limits in ranges.items():
            page.evaluate(
                "([id, value]) => { const input = document.getElementById(id); input.value = value;"
                " input.dispatchEvent(new Event('change')); }",
                [name, str(limits[end])],
            )
            _wait_done(page)
    assert not page.errors, page.errors


def _until_done(page, action) -> None:
    """`action()` (a pick or a tick that starts a request), then wait for that request's end (not a state
    left from an earlier one)."""
    page.evaluate("document.body.dataset.state = 'waiting'")
    action()
    _wait_done(page)


def test_the_status_line_shows_the_servers_progress(page, tmp_path):
    """A large photo, coarse to fine on the CPU: the status line says how far the server is while it works."""
    large = tmp_path / "large.png"
    Image.open(EXAMPLE).resize((2000, 1500)).save(large)
    _until_done(page, lambda: page.set_input_files("#file", str(large)))
    page.evaluate(
        """window.seen = [];
        new MutationObserver(() => window.seen.push(document.getElementById("status").textContent))
            .observe(document.getElementById("status"), { childList: true, characterData: true, subtree: true });"""
    )
    try:
        _until_done(page, lambda: page.check("#highres"))  # the picture again, coarse to fine
        seen = page.evaluate("window.seen")
    finally:
        _until_done(page, lambda: page.uncheck("#highres"))
    shares = [int(text.split()[-1].rstrip("%")) for text in seen if text.endswith("%")]
    assert shares and shares == sorted(shares) and 0 < max(shares) <= 95, seen
    assert not page.errors, page.errors
