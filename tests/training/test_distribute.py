"""tf.distribute: 2 replicas (MirroredStrategy over 2 logical CPU devices; MultiWorkerMirrored
with 2 worker processes on 127.0.0.1) end with the single-device parameters, to tolerance.

Each run happens in a fresh process (`distribute_worker.py`): logical devices and TF_CONFIG
must be in place before TensorFlow initialises. Both runs of the worker (SGD: 2 EM iterations
with sharded E-steps; Adam: 1 EM iteration) are compared with the same runs on one device.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "distribute_worker.py")
TIMEOUT = 240
# measured with 2 logical CPUs: max |difference| 6e-8 (SGD, 2 EM iterations) and 6e-7 (Adam,
# 1 EM iteration), identical paths. The margin is for Adam, whose early steps are ~lr * g / |g|:
# rounding noise in near-zero gradient entries can move those by much more than float eps.
TOL = {"sgd": 1e-5, "adam": 1e-3}


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(strategy, out, tmp_path):
    proc = subprocess.run(
        [sys.executable, WORKER, strategy, str(out), str(tmp_path / strategy)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    _run("default", tmp / "single.npz", tmp)
    return dict(np.load(tmp / "single.npz"))


def _compare(single, other, replicas):
    for key, tol in TOL.items():
        assert list(other[f"{key}/replicas"]) == [replicas] * len(other[f"{key}/replicas"])
        params = sorted(k for k in single if k.startswith(f"{key}/param"))
        assert params
        diffs = [float(np.max(np.abs(single[k] - other[k]))) for k in params]
        print(f"{key}: max |param difference| per variable {np.array(diffs)}")
        assert max(diffs) <= tol, (key, diffs)
        for k in (k for k in single if k.startswith(f"{key}/path")):
            np.testing.assert_array_equal(single[k], other[k], err_msg=k)
        np.testing.assert_allclose(
            single[f"{key}/lower"], other[f"{key}/lower"], rtol=1e-5, atol=1e-3
        )


def test_mirrored_two_logical_cpus_matches_single_device(single, tmp_path):
    out = _run("mirrored", tmp_path / "mirrored.npz", tmp_path)
    assert "2 replicas" in out
    _compare(single, dict(np.load(tmp_path / "mirrored.npz")), 2)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_multiworker_two_processes_match_single_device(single, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    try:
        for i in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            log = open(tmp_path / f"worker{i}.log", "w")
            procs.append(
                (
                    subprocess.Popen(
                        [
                            sys.executable,
                            WORKER,
                            "multiworker",
                            str(tmp_path / "multi.npz"),
                            str(tmp_path / "run"),
                        ],
                        env=_env(TF_CONFIG=json.dumps(tf_config)),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),
                    log,
                )
            )
        for p, _ in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p, log in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for (p, _), text in zip(procs, logs):
        assert p.returncode == 0, text[-4000:]
        assert "done: 2 replicas" in text
    _compare(single, dict(np.load(tmp_path / "multi.npz")), 2)
    # the chief wrote the run directory; the other worker's temporary directory is gone
    assert os.path.isdir(tmp_path / "run" / "sgd" / "checkpoints")


def test_make_strategy_errors(monkeypatch):
    from tfdgmm.training import distribute

    assert distribute.make_strategy("default") is None
    with pytest.raises(distribute.DistributeConfigError, match="unknown strategy"):
        distribute.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributeConfigError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributeConfigError, match="not valid JSON"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}
        ),
    )
    with pytest.raises(distribute.DistributeConfigError, match="task must be"):
        distribute.make_strategy("multiworker")
