"""Body of tests/training/test_distribute.py, run in a fresh process (logical devices and
TF_CONFIG must be set before TensorFlow starts): trains two small runs and saves the final
parameters and paths to an .npz.

    python distribute_worker.py STRATEGY OUT.npz [RUN_DIR]

STRATEGY: default | mirrored (2 logical CPU devices) | multiworker (TF_CONFIG in the
environment; only the chief writes OUT.npz).
"""

import contextlib
import os
import sys
import tempfile


def runs():
    from tfdgmm.training import EMConfig

    base = dict(
        lr_final_updates=4,
        estep_batch_size=100,
        batch_size=100,
        early_stopping_patience=0,
        progress_interval_seconds=1000,
        seed=0,
    )
    # plain SGD: float summation order is the only difference, so the whole EM run (sharded
    # E-steps included) must agree tightly and find the same paths
    sgd = EMConfig(
        em_iterations=2,
        updates_first=12,
        updates_later=8,
        optimizer="sgd",
        learning_rate=1e-3,
        **base,
    )
    # Adam (the default): one EM iteration; Adam divides by |g|, which amplifies rounding
    # noise in near-zero gradient entries (measured ~1e-4 after the first update)
    adam = EMConfig(em_iterations=1, updates_first=12, learning_rate=1e-2, **base)
    return {"sgd": sgd, "adam": adam}


ARCH = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 2},
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 2},
    ],
}


def main(name, out, run_dir=None):
    from tfdgmm.training import distribute

    if name == "mirrored":
        distribute.configure_cpu_devices(2)
    import numpy as np
    import tensorflow as tf

    import tfdgmm
    from tfdgmm.training import EMTrainer

    strategy = distribute.make_strategy(name)
    x = (
        tfdgmm.DeepGMM.from_config(dict(ARCH, seed=11))
        .sample(200, seed=tf.constant([3, 4]))
        .numpy()
    )
    result = {}
    for key, cfg in runs().items():
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = tfdgmm.DeepGMM.from_config(dict(ARCH, seed=0))
        # move the alternatives apart: freshly initialised top layers are orthogonal, so their
        # alternatives tie exactly under the standard-normal latent and rounding noise (which
        # differs with the per-replica batch size) would pick between them
        rng = np.random.default_rng(5)
        for v in model.trainable_variables:
            v.assign_add(0.1 * rng.standard_normal(v.shape).astype(np.float32))
        d = os.path.join(run_dir or tempfile.mkdtemp(), key)
        trainer = EMTrainer(
            model,
            cfg,
            x[:200],
            None,
            d,
            strategy=strategy,
            log=lambda s: print(f"[{name}] {s}", flush=True),
        )
        history = trainer.fit()
        for i, v in enumerate(model.trainable_variables):
            result[f"{key}/param{i}"] = v.numpy()
        for i, p in enumerate(trainer.train_search.paths):
            result[f"{key}/path{i}"] = p.numpy()
        result[f"{key}/replicas"] = np.array([r["replicas"] for r in history])
        result[f"{key}/lower"] = trainer.train_search.lower.numpy()
    if distribute.is_chief(strategy):
        np.savez(out, **result)
    print(f"[{name}] done: {distribute.num_replicas(strategy)} replicas", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
