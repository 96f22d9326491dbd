"""The stability sweep runs each EM once: configs grouped by equal model/training/data sections."""

from repo_scripts import load_script


def _stability():
    return load_script("bench/stability.py")


def test_gating_configs_run_as_their_intermediate_twins_and_nothing_else_is_merged():
    stability = _stability()
    names = stability.all_cpu_configs()
    assert len(names) == 45
    runners = {name: stability.same_em_as(name, names) for name in names}
    for layers in (2, 3, 4, 5):
        assert runners[f"table3_gating_L{layers}_cpu"] == f"table3_intermediate_L{layers}_cpu"
        assert runners[f"table3_intermediate_L{layers}_cpu"] is None
        assert runners[f"table3_bottom_L{layers}_cpu"] is None
    # one layer: bottom, intermediate and gated are one model; the plain one runs, by name
    assert runners["table3_bottom_L1_cpu"] is None
    assert runners["table3_intermediate_L1_cpu"] == "table3_bottom_L1_cpu"
    assert runners["table3_gating_L1_cpu"] == "table3_bottom_L1_cpu"
    merged = {name for name, runner in runners.items() if runner is not None}
    assert merged == {f"table3_gating_L{n}_cpu" for n in range(1, 6)} | {
        "table3_intermediate_L1_cpu"
    }


def test_a_gating_config_that_trains_differently_is_run_itself(monkeypatch):
    stability = _stability()
    names = stability.all_cpu_configs()
    real = stability.em_sections

    def sections(name, overrides=(), commit_id=None):
        out = real(name, overrides, commit_id)
        if name == "table3_gating_L3_cpu":  # e.g. gating between the E-steps changes the EM
            out["training"] = dict(out["training"], learning_rate=1.0e-4)
        return out

    monkeypatch.setattr(stability, "em_sections", sections)
    assert stability.same_em_as("table3_gating_L3_cpu", names) is None
