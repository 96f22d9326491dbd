"""PNG figures of a trained deep GMM: samples (paper figure 6), first-layer filters (figure 5)
and the training curve (bounds in nats and bits/dim against M-step updates).

Filters, as in the paper: activate one latent feature at one patch location just above the first
block-diagonal layer, push it down through that layer (with a given alternative) and the layers
below it (e.g. the half-convolutions) to pixel space, and subtract the image of the zero latent
(the offsets). Every column is one alternative ("local transformation") of the layer, every row
one latent feature; features are sorted by the norm of their pixel-space image.

Only matplotlib's object-oriented API is used (no pyplot state), so this works headless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfdgmm.bijectors import BlockDiagonal, Patchify

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import Images, NatsToBpd, PathLike

__all__ = [
    "image_grid",
    "save_image_grid",
    "save_samples",
    "first_layer_filters",
    "save_filters",
    "filter_layout",
    "save_training_curve",
    "training_curve_figure",
]


def _to_unit(images: Images, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    return np.clip((np.asarray(images, np.float64) - lo) / (hi - lo), 0.0, 1.0)


def image_grid(images: Images, cols: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images `[N, H, W, C]` (values in [0, 1]) into one `[rows*(H+pad), cols*(W+pad), C]`."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value)
    for i in range(n):
        r, q = divmod(i, cols)
        out[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + q * (w + pad) : pad + q * (w + pad) + w,
        ] = images[i]
    return out


def _grid_figure(
    grid: np.ndarray,
    title: str | None = None,
    scale: int = 3,
    xlabel: str | None = None,
    ylabel: str | None = None,
    min_width: float = 2.5,
) -> Figure:
    """A matplotlib `Figure` showing `grid`, with margins (in inches) reserved for the title
    and the axis labels, so that none of them is cut off however narrow the grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = grid.shape[:2]
    dpi = 100
    left, right = (0.35 if ylabel else 0.08), 0.08
    bottom, top = (0.35 if xlabel else 0.08), (0.4 if title else 0.08)
    img_w, img_h = max(w * scale / dpi, min_width), max(h * scale / dpi, 1.0)
    fig_w, fig_h = img_w + left + right, img_h + bottom + top
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([left / fig_w, bottom / fig_h, img_w / fig_w, img_h / fig_h])
    ax.imshow(
        grid.squeeze(-1) if grid.shape[-1] == 1 else grid,
        cmap="gray" if grid.shape[-1] == 1 else None,
        interpolation="nearest",
        vmin=0.0,
        vmax=1.0,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def save_image_grid(
    grid: np.ndarray,
    path: PathLike,
    title: str | None = None,
    scale: int = 3,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> PathLike:
    """Write a grid (from `image_grid`) to a PNG, with an optional title and axis labels."""
    _grid_figure(grid, title, scale, xlabel, ylabel).savefig(path)
    return path


def save_samples(
    model: DeepGMM,
    path: PathLike,
    n: int = 64,
    seed: int = 0,
    value_range: tuple[float, float] = (-1.0, 1.0),
    cols: int = 8,
    title: str | None = None,
) -> np.ndarray:
    """Sample `n` images with a stateless `seed` and save them as a grid PNG; returns the
    samples `[n, H, W, C]` (model scale)."""
    x = model.sample(n, seed=tf.constant([int(seed), 7], tf.int32)).numpy()
    grid = image_grid(_to_unit(x, value_range), cols=cols)
    save_image_grid(grid, path, title=title or f"{n} samples (seed {seed})")
    return x


def _first_block_diagonal(model: DeepGMM) -> int:
    for i, layer in enumerate(model.layers):
        if isinstance(layer, BlockDiagonal):
            return i
    return len(model.layers) - 1


def _choice(model: DeepGMM, i: int, k: int, n: int) -> dict:
    kk, shape = model.layer_specs[i]
    if kk == 1:
        return {}
    return {"choice": tf.fill([n, *shape], tf.constant(k, tf.int32))}


def first_layer_filters(
    model: DeepGMM,
    layer: int | None = None,
    max_alternatives: int = 8,
    max_features: int = 12,
    location: tuple[int, int] | None = None,
) -> tuple[np.ndarray, dict]:
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
        norms = np.sqrt((f**2).reshape(d, -1).sum(-1))
        order = np.argsort(-norms)[:max_features]
        out.append(f[order])
        shown.append(order.tolist())
    return np.stack(out), {"layer": b, "location": [int(ci), int(cj)], "features": shown}


def filter_layout(num_alternatives: int, num_features: int) -> tuple[int, int]:
    """`(blocks, rows)`: the features are split into `blocks` side-by-side blocks of `rows`
    rows (each block has one column per alternative), so that the figure is roughly square
    even with few alternatives (2 alternatives x 12 features: 2 blocks of 6 rows)."""
    a, f = max(1, num_alternatives), max(1, num_features)
    blocks = max(1, min(f, int(round(np.sqrt(f / a)))))
    return blocks, int(np.ceil(f / blocks))


def save_filters(
    model: DeepGMM,
    path: PathLike,
    layer: int | None = None,
    max_alternatives: int = 8,
    max_features: int = 12,
    crop: int | None = None,
) -> dict:
    """Save the figure-5 style filters as a PNG: one column per alternative, one row per
    feature; with few alternatives the features wrap into side-by-side blocks.

    `crop`: side in pixels of the window around the activated location (default: 5 patches).
    """
    filters, info = first_layer_filters(model, layer, max_alternatives, max_features)
    a, f, h, w, c = filters.shape
    r = model.patch_size
    crop = min(h, w, crop or 5 * r)
    ci, cj = info["location"]
    top = int(np.clip(ci * r + r // 2 - crop // 2, 0, h - crop))
    left = int(np.clip(cj * r + r // 2 - crop // 2, 0, w - crop))
    tiles = filters[:, :, top : top + crop, left : left + crop]
    scale = np.max(np.abs(tiles), axis=(2, 3, 4), keepdims=True)
    tiles = 0.5 + 0.5 * tiles / np.where(scale > 0, scale, 1.0)
    tiles = np.transpose(tiles, (1, 0, 2, 3, 4))  # [feature, alternative, ...]
    blocks, rows = filter_layout(a, f)
    pad_rows = blocks * rows - f
    if pad_rows:
        tiles = np.concatenate([tiles, np.ones((pad_rows,) + tiles.shape[1:])], 0)
    grids = [
        image_grid(
            tiles[b * rows : (b + 1) * rows].reshape(rows * a, crop, crop, c),
            cols=a,
            pad=1,
            pad_value=1.0,
        )
        for b in range(blocks)
    ]
    gap = np.ones((grids[0].shape[0], 2 * crop // 3 + 1, c))
    grid = np.concatenate([x for g in grids for x in (g, gap)][:-1], axis=1)
    xlabel = "alternative (local transformation)"
    if blocks > 1:
        xlabel += f"; features continue in {blocks} blocks"
    save_image_grid(
        grid,
        path,
        scale=6,
        title=f"filters above layer {info['layer']} ({type(model.layers[info['layer']]).__name__})",
        xlabel=xlabel,
        ylabel="latent feature (by norm)",
    )
    info["blocks"] = blocks
    return info


def save_training_curve(
    history: list[dict],
    path: PathLike,
    nats_to_bpd: NatsToBpd | None = None,
    baseline: dict | float | None = None,
    title: str | None = None,
) -> PathLike:
    """`training_curve_figure(...)` saved as a PNG at `path`; returns `path`."""
    training_curve_figure(history, nats_to_bpd, baseline, title).savefig(path)
    return path


def training_curve_figure(
    history: list[dict],
    nats_to_bpd: NatsToBpd | None = None,
    baseline: dict | float | None = None,
    title: str | None = None,
) -> Figure:
    """Bounds against M-step updates (a matplotlib `Figure`): nats on the left axis and
    bits/dim on the right, one point per EM iteration.

    Args:
      history: the trainer's per-iteration records (`metrics.json` `history`): `updates`,
        `train_lower_bound`, `validation_lower_bound`, `train_upper_bound`, ...
      nats_to_bpd: nats -> bits/dim (affine and decreasing, e.g. `tfdgmm.units`); None: no
        bits/dim axis.
      baseline: `{split: nats}` of the Gaussian baseline (`tfdgmm baseline`), drawn as
        horizontal lines; None when not known.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = [r for r in history if isinstance(r, dict)]
    updates = np.cumsum([float(r.get("updates") or 0) for r in history])
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = {
        "train_lower_bound": ("C0", "-", "train LB"),
        "validation_lower_bound": ("C1", "-", "validation LB"),
        "train_upper_bound": ("C0", ":", "train UB*"),
        "validation_upper_bound": ("C1", ":", "validation UB*"),
    }
    for key, (color, line, label) in styles.items():
        pts = [
            (u, r[key])
            for u, r in zip(updates, history)
            if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])
        ]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=color, linestyle=line, marker="o", markersize=3, label=label)
    for i, (split, nats) in enumerate(sorted((baseline or {}).items())):
        ax.axhline(
            float(nats),
            color="0.4",
            linestyle="--",
            linewidth=1,
            label=f"Gaussian baseline ({split})" if i < 3 else None,
        )
    ax.set_xlabel("M-step updates")
    ax.set_ylabel("log-likelihood bound (nats / image)")
    if nats_to_bpd is not None:
        a0, a1 = float(nats_to_bpd(0.0)), float(nats_to_bpd(1.0))
        slope = a1 - a0  # bpd = a0 + slope * nats (affine)
        sec = ax.secondary_yaxis(
            "right",
            functions=(
                lambda n: a0 + slope * np.asarray(n),
                lambda b: (np.asarray(b) - a0) / slope,
            ),
        )
        sec.set_ylabel("bits / dim")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "training curve", fontsize=10)
    fig.tight_layout()
    return fig
