"""EMConfig: (de)serialisation, validation, the learning-rate schedule."""

import pytest
import tensorflow as tf

from tfdgmm.training import EMConfig, learning_rate_at, mstep_updates


def test_round_trip_and_unknown_keys():
    cfg = EMConfig(em_iterations=3, learning_rate=0.01, optimizer_kwargs={"beta_2": 0.99})
    assert EMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown training config keys"):
        EMConfig.from_dict({"em_iteration": 3})
    with pytest.raises(ValueError, match="batch_size"):
        EMConfig(batch_size=0)
    with pytest.raises(ValueError, match="location_method"):
        EMConfig(location_method="nope")


def test_new_training_fields_are_validated():
    for bad in (
        {"hc_optimizer": "adam"},
        {"hc_fisher": "true"},
        {"hc_momentum": 1.0},
        {"hc_learning_rate": 0},
        {"lr_decay": "linear"},
        {"hc_max_step_nats": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EMConfig.from_dict(bad)
    assert EMConfig().hc_optimizer == "kfac" and EMConfig().hc_fisher == "sampled"


def test_schedule_python_and_tensor_agree():
    cfg = EMConfig(
        learning_rate=1e-2,
        lr_em_decay=0.5,
        lr_min_factor=0.2,
        lr_final_updates=30,
        lr_final_factor=0.1,
        updates_first=100,
        updates_later=40,
        first_iterations=2,
        lr_warmup_updates=0,
        lr_decay="final",
    )
    assert [mstep_updates(cfg, t) for t in range(4)] == [100, 100, 40, 40]
    assert learning_rate_at(cfg, 0, 0, 100) == pytest.approx(1e-2)
    assert learning_rate_at(cfg, 0, 69, 100) == pytest.approx(1e-2)
    assert learning_rate_at(cfg, 0, 70, 100) == pytest.approx(1e-3)  # last 30 updates
    assert learning_rate_at(cfg, 1, 0, 100) == pytest.approx(5e-3)  # decay across EM
    assert learning_rate_at(cfg, 5, 0, 40) == pytest.approx(2e-3)  # floor 0.2
    assert learning_rate_at(cfg, 5, 20, 40) == pytest.approx(2e-4)  # final: at most half
    assert learning_rate_at(cfg, 5, 19, 40, lr_scale=0.5) == pytest.approx(1e-3)
    warm = cfg.replace(lr_warmup_updates=10, lr_warmup_every_mstep=False)
    assert learning_rate_at(warm, 0, 0, 100) == pytest.approx(1e-3)  # ramp: (u + 1) / 10
    assert learning_rate_at(warm, 0, 4, 100) == pytest.approx(5e-3)
    assert learning_rate_at(warm, 0, 10, 100) == pytest.approx(1e-2)
    assert learning_rate_at(warm, 1, 0, 100) == pytest.approx(5e-3)  # first M-step only
    every = warm.replace(lr_warmup_every_mstep=True)
    assert learning_rate_at(every, 1, 0, 100) == pytest.approx(5e-4)  # ramps again at t = 1
    assert learning_rate_at(every, 1, 10, 100) == pytest.approx(5e-3)
    cosine = cfg.replace(lr_decay="cosine", lr_final_factor=0.01)
    assert learning_rate_at(cosine, 0, 0, 100) == pytest.approx(1e-2)
    assert learning_rate_at(cosine, 0, 50, 100) == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5))
    assert learning_rate_at(cosine, 0, 100, 100) == pytest.approx(1e-4)
    assert learning_rate_at(cosine, 1, 20, 40) == pytest.approx(5e-3 * 0.505)
    for c in (cfg, warm, every, cosine):
        for t, u, n in [(0, 0, 100), (0, 4, 100), (0, 70, 100), (3, 25, 40), (7, 3, 40)]:
            tensor = learning_rate_at(
                c,
                tf.constant(t, tf.int64),
                tf.constant(u, tf.int64),
                tf.constant(n, tf.int64),
                tf.constant(0.5),
            )
            assert float(tensor) == pytest.approx(learning_rate_at(c, t, u, n, 0.5), rel=1e-6)
