"""PNG figures of a trained deep GMM: samples (paper figure 6) and first-layer filters (figure 5).

Filters, as in the paper: activate one latent feature at one patch location just above the first
block-diagonal layer, push it down through that layer (with a given alternative) and the layers
below it (e.g. the half-convolutions) to pixel space, and subtract the image of the zero latent
(the offsets). Every column is one alternative ("local transformation") of the layer, every row
one latent feature; features are sorted by the norm of their pixel-space image.

Only matplotlib's object-oriented API is used (no pyplot state), so this works headless.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdgmm.bijectors import BlockDiagonal, Patchify

__all__ = ["image_grid", "save_image_grid", "save_samples", "first_layer_filters",
           "save_filters"]


def _to_unit(images, value_range):
    lo, hi = value_range
    return np.clip((np.asarray(images, np.float64) - lo) / (hi - lo), 0.0, 1.0)


def image_grid(images, cols, pad=1, pad_value=1.0):
    """Tile images `[N, H, W, C]` (values in [0, 1]) into one `[rows*(H+pad), cols*(W+pad), C]`."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return out


def save_image_grid(grid, path, title=None, scale=3, xlabel=None, ylabel=None):
    """Write a grid (from `image_grid`) to a PNG, with an optional title and axis labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = grid.shape[:2]
    dpi = 100
    fig = Figure(figsize=(max(w * scale / dpi, 2.5), max(h * scale / dpi, 2.5) + 0.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.9 if title else 0.96])
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid,
              cmap="gray" if grid.shape[-1] == 1 else None, interpolation="nearest",
              vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path)
    return path


def save_samples(model, path, n=64, seed=0, value_range=(-1.0, 1.0), cols=8, title=None):
    """Sample `n` images with a stateless `seed` and save them as a grid PNG; returns the
    samples `[n, H, W, C]` (model scale)."""
    x = model.sample(n, seed=tf.constant([int(seed), 7], tf.int32)).numpy()
    grid = image_grid(_to_unit(x, value_range), cols=cols)
    save_image_grid(grid, path, title=title or f"{n} samples (seed {seed})")
    return x


def _first_block_diagonal(model):
    for i, layer in enumerate(model.layers):
        if isinstance(layer, BlockDiagonal):
            return i
    return len(model.layers) - 1


def _choice(model, i, k, n):
    kk, shape = model.layer_specs[i]
    if kk == 1:
        return {}
    return {"choice": tf.fill([n, *shape], tf.constant(k, tf.int32))}


def first_layer_filters(model, layer=None, max_alternatives=8, max_features=12, location=None):
    """Pixel-space filters of the latent features above `layer` (default: the first
    block-diagonal layer).

    Returns `(filters, info)`: `filters` `[A, F, H, W, C]` (alternative, feature; features
    sorted by decreasing norm per alternative) and a dict with the layer index, location and
    the feature indices shown.
    """
    b = _first_block_diagonal(model) if layer is None else int(layer)
    hp, wp, d = model.patch_shape
    ci, cj = location if location is not None else (hp // 2, wp // 2)
    k_count = min(model.layer_specs[b][0], max_alternatives)
    basis = np.zeros((d + 1, hp, wp, d), np.float64)
    basis[np.arange(1, d + 1), ci, cj, np.arange(d)] = 1.0
    h_top = tf.constant(basis, model.dtype)
    patchify = Patchify(model.patch_size)
    out, shown = [], []
    for k in range(k_count):
        h = h_top
        for i in reversed(range(b + 1)):
            h = model.layers[i].forward(h, **_choice(model, i, k if i == b else 0, d + 1))
        x = patchify.inverse(h).numpy()
        f = x[1:] - x[:1]  # remove the offsets
        norms = np.sqrt((f ** 2).reshape(d, -1).sum(-1))
        order = np.argsort(-norms)[:max_features]
        out.append(f[order])
        shown.append(order.tolist())
    return np.stack(out), {"layer": b, "location": [int(ci), int(cj)], "features": shown}


def save_filters(model, path, layer=None, max_alternatives=8, max_features=12, crop=None):
    """Save the figure-5 style filters as a PNG (rows: features, columns: alternatives).

    `crop`: side in pixels of the window around the activated location (default: 5 patches).
    """
    filters, info = first_layer_filters(model, layer, max_alternatives, max_features)
    a, f, h, w, c = filters.shape
    r = model.patch_size
    crop = min(h, w, crop or 5 * r)
    ci, cj = info["location"]
    top = int(np.clip(ci * r + r // 2 - crop // 2, 0, h - crop))
    left = int(np.clip(cj * r + r // 2 - crop // 2, 0, w - crop))
    tiles = filters[:, :, top:top + crop, left:left + crop]
    scale = np.max(np.abs(tiles), axis=(2, 3, 4), keepdims=True)
    tiles = 0.5 + 0.5 * tiles / np.where(scale > 0, scale, 1.0)
    tiles = np.transpose(tiles, (1, 0, 2, 3, 4)).reshape(f * a, crop, crop, c)  # row = feature
    grid = image_grid(tiles, cols=a, pad=1, pad_value=1.0)
    save_image_grid(
        grid, path, scale=6,
        title=f"filters above layer {info['layer']} "
              f"({type(model.layers[info['layer']]).__name__})",
        xlabel="alternative (local transformation)", ylabel="latent feature (by norm)")
    return info
