"""The bodies of `tfdgmm inpaint` (conditional mean and samples of masked images) and
`tfdgmm score` (per-image bits/dim to a CSV, e.g. for out-of-distribution checks)."""

from __future__ import annotations

import csv
import math
import os
from typing import TYPE_CHECKING

from tfdgmm.runs.data import DataLoadError, load_data

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np
    import tensorflow as tf

__all__ = ["MASK_KINDS", "make_mask", "read_images", "inpaint_run", "score_run", "psnr"]

#: The named masks of `--mask` (besides `random:P` and a file).
MASK_KINDS = ("center", "centre", "left", "right", "top", "bottom")


def make_mask(spec: str, image_shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A float32 mask `[H, W, C]` (1 = observed, 0 = missing) from a `--mask` spec.

    `center` (the middle half of each side missing: a quarter of the pixels), `left`, `right`,
    `top`, `bottom` (that half missing), `random:P` (each pixel missing with probability P,
    all its channels alike; numpy seed `seed`), or a file: `.png` (white or any non-zero value =
    observed, black = missing; grey or colour PNGs must be exactly black and white) or `.npy`
    (0/1), shaped `[H, W]`, `[H, W, 1]` or `[H, W, C]`.
    """
    import numpy as np

    h, w, c = (int(s) for s in image_shape)
    mask = np.ones((h, w, c), np.float32)
    spec = str(spec)
    if spec in ("center", "centre"):
        mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = 0.0
    elif spec == "left":
        mask[:, : w // 2] = 0.0
    elif spec == "right":
        mask[:, w // 2 :] = 0.0
    elif spec == "top":
        mask[: h // 2] = 0.0
    elif spec == "bottom":
        mask[h // 2 :] = 0.0
    elif spec.startswith("random:"):
        try:
            p = float(spec.partition(":")[2])
        except ValueError:
            p = float("nan")
        if not 0.0 < p < 1.0:
            raise ValueError(
                f"--mask {spec}: random:P needs a fraction of missing pixels 0 < P < 1, "
                "e.g. random:0.5"
            )
        missing = np.random.default_rng(seed).random((h, w)) < p
        mask[missing] = 0.0
    elif os.path.splitext(spec)[1].lower() in (".png", ".npy"):
        mask = _mask_file(spec, (h, w, c))
    else:
        raise ValueError(
            f"--mask {spec!r}: expected one of {', '.join(MASK_KINDS[:1] + MASK_KINDS[2:])}, "
            "random:P (0 < P < 1) or a .png / .npy file"
        )
    if mask.min() > 0:
        raise ValueError(f"--mask {spec}: no pixel is missing; there is nothing to fill in")
    return mask


def _mask_file(path: str, shape: Sequence[int]) -> np.ndarray:
    import numpy as np

    h, w, c = shape
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--mask {path}: no such file")
    if path.lower().endswith(".npy"):
        try:
            values = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError) as err:
            raise ValueError(f"--mask {path}: cannot read it as a .npy array: {err}") from err
        allowed = (0.0, 1.0)
    else:
        values = _read_png(path).astype(np.float64)
        allowed = (0.0, 255.0)
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[:2] != (h, w) or values.shape[2] not in (1, c):
        raise ValueError(
            f"--mask {path}: shape {list(values.shape)} does not fit the model's images "
            f"[{h}, {w}, {c}]; expected [{h}, {w}], [{h}, {w}, 1] or [{h}, {w}, {c}]"
        )
    if not np.all(np.isin(values, allowed)):
        raise ValueError(
            f"--mask {path}: values must be {allowed[0]:g} (missing) or {allowed[1]:g} "
            f"(observed); found {np.unique(values)[:6].tolist()}"
        )
    return np.broadcast_to(values > 0, (h, w, c)).astype(np.float32)


def _read_png(path: str) -> np.ndarray:
    import tensorflow as tf

    try:
        return tf.io.decode_png(tf.io.read_file(path)).numpy()
    except tf.errors.OpError as err:
        raise ValueError(f"{path}: cannot decode as a PNG: {err.message}") from err


def read_images(
    spec: str,
    image_shape: Sequence[int],
    split: str = "test",
    limit: int | None = None,
    data_cfg: dict | None = None,
) -> tuple[np.ndarray, list[str], int]:
    """uint8 images `[N, H, W, C]` and their names for `tfdgmm score` / `inpaint`.

    `spec`: a directory of `.png` files (every one, in name order), one `.npz` file (all its
    `images`), or a data spec of `tfdgmm.data.load_cifar10` ('tfds', a directory with
    train.npz + test.npz or the official batches) whose `split` is used. Returns
    `(images, names, noise_start)`: `noise_start` is the position of the first image in the
    fixed dequantisation noise stream (so a split scores as it does in `tfdgmm evaluate`)."""
    import numpy as np

    from tfdgmm.data import formats

    if limit is not None and int(limit) < 1:
        raise ValueError(f"--limit must be at least 1; got {limit}")
    path = os.path.abspath(os.path.expanduser(str(spec)))
    if os.path.isdir(path) and any(f.lower().endswith(".png") for f in os.listdir(path)):
        names = sorted(f for f in os.listdir(path) if f.lower().endswith(".png"))[:limit]
        images = []
        for name in names:
            img = _read_png(os.path.join(path, name))
            if img.shape[-1] != image_shape[-1] and img.shape[-1] == 4:
                img = img[..., : image_shape[-1]]  # drop an alpha channel
            if tuple(img.shape) != tuple(image_shape):
                raise ValueError(
                    f"{os.path.join(path, name)}: image of shape {list(img.shape)}; the model "
                    f"takes {list(image_shape)}"
                )
            images.append(img)
        return np.stack(images), names, 0
    if os.path.isfile(path) and path.endswith(".npz"):
        try:
            images, _ = formats.read_npz(path)
        except Exception as err:  # DataError
            raise DataLoadError(str(err)) from err
        images = images[:limit]
        return images, [f"{os.path.basename(path)}[{i}]" for i in range(len(images))], 0
    from tfdgmm.runs.config import DATA_DEFAULTS

    cfg = dict(DATA_DEFAULTS, **(data_cfg or {}))
    cfg.update(train_limit=None, validation_limit=None, test_limit=None)
    splits = load_data(cfg, spec)
    s = getattr(splits, split)
    if s is None:
        raise DataLoadError(f"{splits.source} has no {split} split")
    images = s.images[:limit]
    return images, [f"{split}[{i}]" for i in range(len(images))], s.noise_start


def _dequantize(images: np.ndarray, noise_seed: int, noise_start: int) -> np.ndarray:
    from tfdgmm.data import dequantize
    from tfdgmm.data.dequantize import reference_noise

    noise = reference_noise(int(noise_seed), int(noise_start), len(images), images.shape[1:])
    return dequantize(images, noise)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image PSNR in dB on the pixel scale 0..255 of images on [-1, 1] (`[N, H, W, C]`),
    over the entries where `mask` (broadcast) is True."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.square((a - b) * 128.0)
    if mask is not None:
        sel = np.broadcast_to(np.asarray(mask, bool), a.shape[1:]).reshape(-1)
        err = err.reshape(len(a), -1)[:, sel]
    mse = err.reshape(len(a), -1).mean(axis=1)
    return 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


def inpaint_run(
    run_dir: str,
    mask_spec: str = "center",
    n: int = 16,
    out: str | None = None,
    data_spec: str | None = None,
    split: str = "test",
    images: int = 4,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> str:
    """`tfdgmm inpaint`: the first `images` images of `split` (or of a PNG folder / .npz),
    masked, with the conditional mean and `n` conditional samples, as a PNG grid (one row per
    image: original, masked, conditional mean, samples). Logs per image the PSNR of the mean on
    the missing pixels and `log p(x_m | x_o)` of the true pixels. Returns the PNG path."""
    import numpy as np
    import tensorflow as tf

    from tfdgmm.runs import layout
    from tfdgmm.runs.commands import run_model
    from tfdgmm.training import figures

    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"--n must be at least 1; got {n}")
    config, model, ckpt = run_model(run_dir)
    mask = make_mask(mask_spec, model.image_shape, seed)
    pixels, names, start = read_images(
        data_spec or config["data"].get("spec") or "tfds",
        model.image_shape,
        split,
        images,
        config["data"],
    )
    noise_seed = int(config["data"]["noise_seed"])
    x = _dequantize(pixels, noise_seed, start)
    xt = tf.constant(x, model.dtype)
    log(
        f"inpainting {len(x)} images ({names[0]} ...) with {ckpt}: mask {mask_spec} "
        f"({int((mask == 0).sum())} of {mask.size} values missing)"
    )
    c = model.conditional(xt, mask, seed=tf.constant([int(seed), 17], tf.int32))
    mean = c.mean().numpy()
    samples = c.sample(int(n), seed=tf.constant([int(seed), 18], tf.int32)).numpy()
    ll = c.log_prob(xt).numpy()
    quality = psnr(mean, x, mask == 0)
    missing = int((mask == 0).sum())
    for i, name in enumerate(names):
        log(
            f"  {name}: PSNR of the conditional mean on the missing pixels {quality[i]:.2f} dB; "
            f"log p(x_m | x_o) {ll[i]:.1f} nats ({ll[i] / missing:.3f} per missing value)"
        )
    masked = np.where(mask > 0, x, 0.0)  # missing pixels shown mid-grey
    rows = []
    for i in range(len(x)):
        rows += [x[i], masked[i], mean[i], *samples[:, i]]
    cols = 3 + int(n)
    grid = figures.image_grid(np.clip((np.stack(rows) + 1.0) / 2.0, 0.0, 1.0), cols=cols)
    out = out or os.path.join(run_dir, layout.FIGURES, f"inpaint-{_slug(mask_spec)}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figures.save_image_grid(
        grid,
        out,
        title=f"original | masked ({mask_spec}) | conditional mean | {n} samples",
    )
    return out


def _slug(spec: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in os.path.basename(str(spec)))


def score_run(
    run_dir: str,
    data_spec: str | None = None,
    out: str | None = None,
    split: str = "test",
    limit: int | None = None,
    restarts: int | None = None,
    batch_size: int | None = None,
    noise_seed: int | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """`tfdgmm score`: per-image lower bound (nats) and bits/dim of a run's model on images
    (a PNG folder, a .npz, or a split of a data spec; see `read_images`), dequantised with the
    fixed noise of `noise_seed` (default: the run's), by the run's evaluation search. Writes a
    CSV `index,name,lower_bound_nats,bits_per_dim` and returns its path."""
    import numpy as np
    import tensorflow as tf

    from tfdgmm.runs.commands import run_model
    from tfdgmm.training import EMConfig
    from tfdgmm.units import nats_to_bits_per_dim

    config, model, ckpt = run_model(run_dir)
    em = EMConfig.from_dict(config["training"])
    restarts = em.eval_restarts if restarts is None else int(restarts)
    if restarts < 1:
        raise ValueError(f"--restarts must be at least 1; got {restarts}")
    batch = int(batch_size or em.estep_batch_size)
    if batch < 1:
        raise ValueError(f"--batch-size must be at least 1; got {batch}")
    spec = data_spec or config["data"].get("spec") or "tfds"
    pixels, names, start = read_images(spec, model.image_shape, split, limit, config["data"])
    seed_noise = int(config["data"]["noise_seed"]) if noise_seed is None else int(noise_seed)
    x = _dequantize(pixels, seed_noise, start)
    log(f"scoring {len(x)} images of {spec} with {ckpt} ({restarts} restarts)")
    seed = tf.constant([em.seed, 104729], tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([None, *model.image_shape], model.dtype)])
    def lower(xb: tf.Tensor) -> tf.Tensor:
        return model.best_path(
            xb,
            restarts=restarts,
            seed=seed,
            location_method=em.location_method,
            location_options=em.location_options,
        )[1]

    scores = np.concatenate(
        [lower(tf.constant(x[i : i + batch], model.dtype)).numpy() for i in range(0, len(x), batch)]
    )
    bpd = nats_to_bits_per_dim(scores, num_dims=model.num_dims)
    out = out or os.path.join(run_dir, "scores.csv")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "name", "lower_bound_nats", "bits_per_dim"])
        for i, (name, s, b) in enumerate(zip(names, scores, bpd)):
            w.writerow([i, name, f"{s:.6f}", f"{b:.6f}"])
    log(
        f"mean {float(np.mean(bpd)):.4f} bits/dim over {len(x)} images "
        f"(min {float(np.min(bpd)):.4f}, max {float(np.max(bpd)):.4f}); per image: {out}"
    )
    if not math.isfinite(float(np.mean(bpd))):
        log("WARNING: some scores are not finite")
    return out
