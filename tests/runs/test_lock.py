"""`tfdgmm.runs.lock`: one process writes a run directory at a time."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tfdgmm import layout
from tfdgmm.runs.lock import RunLock, RunLockedError, read_lock


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_records_owner_and_refuses_a_second_holder(tmp_path):
    run = str(tmp_path)
    with RunLock(run, what="train") as lock:
        owner = read_lock(run)
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunLockedError) as err:
            RunLock(run).acquire()
        text = str(err.value)
        assert "\n" not in text and f"PID {os.getpid()}" in text and "in use" in text
        assert lock.held
    assert not os.path.exists(os.path.join(run, layout.LOCK))  # released


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = str(tmp_path)
    with open(os.path.join(run, layout.LOCK), "w") as f:
        json.dump({"pid": _dead_pid(), "host": socket.gethostname()}, f)
    said = []
    with RunLock(run, log=said.append):
        assert read_lock(run)["pid"] == os.getpid()
    assert len(said) == 1 and "stale" in said[0]


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    run = str(tmp_path)
    with open(os.path.join(run, layout.LOCK), "w") as f:
        json.dump({"pid": _dead_pid(), "host": "elsewhere.example"}, f)
    with pytest.raises(RunLockedError, match="elsewhere.example.*delete"):
        RunLock(run).acquire()
    assert read_lock(run)["host"] == "elsewhere.example"


def test_release_never_removes_another_owners_lock(tmp_path):
    run = str(tmp_path)
    lock = RunLock(run).acquire()
    other = {"pid": 1, "host": "elsewhere.example"}
    with open(os.path.join(run, layout.LOCK), "w") as f:  # e.g. taken over meanwhile
        json.dump(other, f)
    lock.release()
    assert read_lock(run) == other


def test_a_read_only_directory_is_one_clear_error(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(layout.LOCK):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)  # (root ignores chmod)
    with pytest.raises(OSError, match="cannot write to the run directory .*Permission denied"):
        RunLock(str(tmp_path)).acquire()
