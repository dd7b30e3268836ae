"""Draws docs/what_it_does.png, the README's picture: a generated synthetic image (the kind of picture the
embedded demo model was trained on; sample 6 of seed 7, the best of the first 12 by IoU: 0.76), its mask and
its cut-out, made by the embedded demo model through the library as `birefnet segment --cutout` makes them.
Run: python docs/what_it_does.py"""

from pathlib import Path

from PIL import Image, ImageDraw

import birefnet
from birefnet.inference import cutout, mask_to_image
from birefnet_training.synthetic import make_sample

ROOT = Path(__file__).resolve().parent.parent
HEIGHT = 240


def checkerboard(size, square=12):
    board = Image.new("RGB", size, (235, 235, 235))
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], square):
        for x in range((y // square) % 2 * square, size[0], 2 * square):
            draw.rectangle([x, y, x + square - 1, y + square - 1], fill=(200, 200, 200))
    return board


def main():
    image, _ = make_sample(seed=7, index=6, size=(HEIGHT, 320))
    model = birefnet.load_model()
    mask = birefnet.segment(model, image)
    rgba = cutout(image, mask)
    shown_cutout = checkerboard(image.size)
    shown_cutout.paste(rgba, mask=rgba.getchannel("A"))
    panels = [("input", image), ("mask", mask_to_image(mask).convert("RGB")), ("cut-out", shown_cutout)]
    sheet = Image.new("RGB", (3 * image.width + 40, HEIGHT + 56), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, panel) in enumerate(panels):
        x = 10 + i * (image.width + 10)
        sheet.paste(panel, (x, 26))
        draw.text((x, 8), label, fill="black")
    draw.text(
        (10, HEIGHT + 34),
        "made here by the embedded demo model on a synthetic sample (the best of 12); photos need the official weights",
        fill="black",
    )
    sheet.save(ROOT / "docs" / "what_it_does.png", optimize=True)


if __name__ == "__main__":
    main()
