"""Render samples as PNG: a scatter plot for 2D data, an image grid for images.

Pillow only (no matplotlib), so the CLI and the server can render fast.
"""

from __future__ import annotations

import io
import math

import numpy as np


def scatter_png(
    points: np.ndarray,
    *,
    size: int = 512,
    lim: float = 4.5,
    color: tuple[int, int, int] = (31, 119, 180),
    colors: np.ndarray | None = None,
    title: str | None = None,
) -> bytes:
    """Draw 2D points ``[n, 2]`` on a square canvas covering ``[-lim, lim]^2``.

    Args:
        points: ``[n, 2]`` array.
        size: canvas side in pixels.
        lim: half-width of the plotted square.
        color: RGB of the dots (used when ``colors`` is None).
        colors: optional ``[n, 3]`` uint8 per-point colours.
        title: optional caption drawn top-left.

    Returns:
        PNG bytes.
    """
    from PIL import Image, ImageDraw

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"scatter_png needs [n, 2] points, got shape {pts.shape}")
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    # axes
    mid = size // 2
    draw.line([(0, mid), (size, mid)], fill=(225, 225, 225))
    draw.line([(mid, 0), (mid, size)], fill=(225, 225, 225))
    px = ((pts[:, 0] + lim) / (2 * lim) * (size - 1)).round().astype(int)
    py = ((lim - pts[:, 1]) / (2 * lim) * (size - 1)).round().astype(int)
    keep = (px >= 0) & (px < size) & (py >= 0) & (py < size) & np.isfinite(pts).all(1)
    arr = np.asarray(img).copy()
    cols = np.asarray(colors, dtype=np.uint8) if colors is not None else np.array(color, dtype=np.uint8)[None]
    r = 1 if len(pts) > 2000 else 2
    for dx in range(-r + 1, r):
        for dy in range(-r + 1, r):
            xx = np.clip(px[keep] + dx, 0, size - 1)
            yy = np.clip(py[keep] + dy, 0, size - 1)
            arr[yy, xx] = cols[keep] if colors is not None else cols
    img = Image.fromarray(arr)
    if title:
        ImageDraw.Draw(img).text((6, 4), title, fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_grid_png(images: np.ndarray, *, nrow: int | None = None, scale: int = 4, pad: int = 1) -> bytes:
    """Tile images ``[n, C, H, W]`` (values in [-1, 1]) into one PNG grid.

    Args:
        images: ``[n, C, H, W]`` with C in {1, 3}, model units in [-1, 1].
        nrow: images per row (default ceil(sqrt(n))).
        scale: integer up-scaling (nearest neighbour) so small images stay visible.
        pad: pixels between tiles.

    Returns:
        PNG bytes.
    """
    from PIL import Image

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid_png needs [n, C, H, W] with C in (1, 3), got {x.shape}")
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    x = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    H, W = ncol * (h + pad) + pad, nrow * (w + pad) + pad
    canvas = np.full((H, W, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y0 : y0 + h, x0 : x0 + w] = x[i].transpose(1, 2, 0)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((W * scale, H * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def samples_png(x: np.ndarray, **kwargs) -> bytes:
    """Scatter for ``[n, 2]`` samples, image grid for ``[n, C, H, W]``."""
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter_png(x, **kwargs)
    if x.ndim in (3, 4):
        return image_grid_png(x, **kwargs)
    raise ValueError(f"cannot render samples of shape {x.shape} as PNG; use .npy")
