"""The page at / in headless Chromium (Playwright): pick an image, see mask and cut-out, coarse to fine,
draw a box (the mask then stays 0 outside it), download the cut-out PNG; the Krita plug-in link."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
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
