"""Figures: sample grids and the first layers' filters (paper figures 5 and 6)."""

import os

import numpy as np
import tensorflow as tf

import tfdgmm
from tfdgmm.training import figures

ARCH = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 3, "selection": "location"},
        {"type": "half_convolution", "kernel_size": 3},
    ],
}


def test_filters_are_the_pixel_images_of_latent_features():
    model = tfdgmm.DeepGMM.from_config(ARCH, dtype=tf.float64)
    filters, info = figures.first_layer_filters(model, max_features=5)
    assert info["layer"] == 1 and info["location"] == [2, 2]
    assert filters.shape == (3, 5, 8, 8, 3)
    # filter = (forward of the layers below the BD's output) applied to a unit vector: check one
    # against the dense generative matrix of layers 0..1 for alternative 2
    d = 12
    feature = info["features"][2][0]
    h = np.zeros((1, 4, 4, d))
    h[0, 2, 2, feature] = 1.0
    zero = np.zeros_like(h)
    choice = tf.fill([1, 4, 4], 2)

    def down(v):
        v = model.layers[1].forward(tf.constant(v), choice=choice)
        return tfdgmm.bijectors.Patchify(2).inverse(model.layers[0].forward(v)).numpy()

    np.testing.assert_allclose(filters[2, 0], (down(h) - down(zero))[0], atol=1e-12)
    norms = np.sqrt((filters[0] ** 2).reshape(5, -1).sum(-1))
    assert np.all(np.diff(norms) <= 1e-12)  # sorted by decreasing norm


def test_pngs_are_written(tmp_path):
    model = tfdgmm.DeepGMM.from_config(ARCH)
    x = figures.save_samples(model, str(tmp_path / "s.png"), n=6, seed=3, cols=3)
    assert x.shape == (6, 8, 8, 3)
    info = figures.save_filters(model, str(tmp_path / "f.png"), max_features=4)
    assert info["layer"] == 1
    for name in ("s.png", "f.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(tmp_path / name) > 500


def _label_extents(fig):
    """Window extents (pixels) of the axes' title and labels, and the figure's size."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    ax = fig.axes[0]
    texts = [ax.title, ax.xaxis.label, ax.yaxis.label]
    return [t.get_window_extent(renderer) for t in texts if t.get_text()], fig.bbox


def test_grid_labels_fit_inside_narrow_figures():
    """A 2-column grid used to be drawn into the whole figure: the y-label fell off the left."""
    grid = figures.image_grid(np.zeros((12, 10, 10, 3)), cols=2)
    fig = figures._grid_figure(
        grid, title="filters", scale=6, xlabel="alternative", ylabel="latent feature (by norm)"
    )
    extents, bbox = _label_extents(fig)
    assert len(extents) == 3
    for e in extents:
        assert e.x0 >= 0 and e.y0 >= 0 and e.x1 <= bbox.width and e.y1 <= bbox.height, e


def test_filters_with_two_alternatives_are_not_a_thin_strip(tmp_path):
    from matplotlib.image import imread

    arch = dict(ARCH, layers=[ARCH["layers"][0], dict(ARCH["layers"][1], alternatives=2)])
    model = tfdgmm.DeepGMM.from_config(arch)
    info = figures.save_filters(model, str(tmp_path / "f.png"), max_features=12)
    assert info["blocks"] == 2 and figures.filter_layout(2, 12) == (2, 6)
    h, w = imread(str(tmp_path / "f.png")).shape[:2]
    assert 0.5 < h / w < 2.0, (h, w)
    assert figures.filter_layout(8, 12) == (1, 12)  # many alternatives: one block


def test_training_curve(tmp_path):
    from tfdgmm.units import nats_to_bits_per_dim

    history = [
        {
            "iteration": 1,
            "updates": 30,
            "train_lower_bound": 100.0,
            "validation_lower_bound": 90.0,
            "train_upper_bound": 101.0,
        },
        {
            "iteration": 2,
            "updates": 15,
            "train_lower_bound": 120.0,
            "validation_lower_bound": 105.0,
            "train_upper_bound": 121.0,
        },
    ]
    path = str(tmp_path / "curve.png")
    figures.save_training_curve(
        history,
        path,
        nats_to_bpd=lambda n: nats_to_bits_per_dim(n, num_dims=192),
        baseline={"validation": 80.0},
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    fig = figures.training_curve_figure(
        history,
        nats_to_bpd=lambda n: nats_to_bits_per_dim(n, num_dims=192),
        baseline={"validation": 80.0},
    )
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["train LB"].get_xdata(), [30, 45])  # cumulative
    np.testing.assert_array_equal(lines["validation LB"].get_ydata(), [90, 105])
    np.testing.assert_array_equal(lines["Gaussian baseline (validation)"].get_ydata(), [80, 80])
    assert ax.get_xlabel() == "M-step updates" and "nats" in ax.get_ylabel()
    assert any(getattr(c, "get_ylabel", lambda: "")() == "bits / dim" for c in ax.child_axes)
