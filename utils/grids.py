"""Labelled image grids: a white strip on the left names each row, and the PNG's text chunk keeps the names."""
import torch
from PIL import Image, ImageDraw, PngImagePlugin
from torchvision.utils import make_grid

from utils.file_io import atomic_write

# The recovery grid's rows, top to bottom (the reference's attack grids, with their names drawn).
ATTACK_GRID_ROWS = ("protected", "recovered", "original")
# Width of the label strip left of a grid, in pixels (PIL's default font: ~6 px per character).
ROW_LABEL_MARGIN = 64


def grid_row_names(image):
    """The row labels of a grid written by :func:`save_labelled_grid` (its PNG text chunk 'rows'), or ()."""
    names = image.info.get("rows", "")
    return tuple(names.split(",")) if names else ()


def labelled_grid(grid, labels, margin=ROW_LABEL_MARGIN):
    """``grid`` (a PIL image of ``len(labels)`` equal rows) with a white strip on the left naming each row.

    The image part is pasted unchanged at x = ``margin``; each label is centred on its row band. The
    names also go into the PNG's text ('rows', read back by :func:`grid_row_names`).
    """
    canvas = Image.new("RGB", (grid.width + margin, grid.height), "white")
    canvas.paste(grid.convert("RGB"), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    band = grid.height / len(labels)
    for number, label in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), label)
        draw.text((max(0, (margin - (right - left)) // 2), int((number + 0.5) * band - (bottom - top) / 2) - top),
                  label, fill="black")
    canvas.info["rows"] = ",".join(labels)
    return canvas


def save_labelled_grid(image, path):
    """Write a :func:`labelled_grid` image as PNG atomically, its row names in the text chunk 'rows'."""
    text = PngImagePlugin.PngInfo()
    text.add_text("rows", image.info["rows"])
    return atomic_write(path, lambda handle: image.save(handle, format="PNG", pnginfo=text))



def grid_image(protected, recovered, originals):
    """Rows ``ATTACK_GRID_ROWS``, min-max scaled as a whole (the reference's grid), their names on the left."""
    rows = torch.cat([protected, recovered, originals]).detach().float().cpu()
    grid = make_grid(rows, nrow=protected.shape[0], padding=0, normalize=True)
    pixels = grid.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
    return labelled_grid(Image.fromarray(pixels.permute(1, 2, 0).numpy()), ATTACK_GRID_ROWS)
