"""How many threads llama.cpp computes with: the rule (choose_threads), the cgroup quota it reads, and the
machine's own answer. No model is loaded."""

import os

import pytest

from toolkit.infer.llamacpp import Threads, cgroup_cores, choose_threads, threads
from toolkit.io.errors import StageError


def test_omp_num_threads_decides_where_set():
    assert choose_threads("1", usable=2, quota=None, idle=2.0) == Threads(1, "1 thread, OMP_NUM_THREADS")
    assert choose_threads("4,2", usable=2, quota=None, idle=0.0).count == 4  # the first level; asked for, kept
    for bad in ("0", "two", "-1", " ,2"):
        with pytest.raises(StageError, match="OMP_NUM_THREADS"):
            choose_threads(bad, usable=2, quota=None, idle=2.0)


def test_one_thread_per_idle_core():
    # an idle 2-core machine: both; a training on both cores: one thread, not two spinning against it
    assert choose_threads(None, usable=2, quota=None, idle=1.9).count == 2
    busy = choose_threads(None, usable=2, quota=None, idle=0.1)
    assert busy == Threads(1, "1 thread: 0.1 of the 2 cores this process may use idle")
    assert choose_threads(None, usable=2, quota=None, idle=0.0).count == 1  # never none
    assert choose_threads(None, usable=8, quota=None, idle=4.6).count == 5


def test_a_cgroup_quota_caps_the_host_cores():
    # a container with --cpus=2 on a 64-core host sees 64 cores in its affinity, mostly idle
    assert choose_threads(None, usable=64, quota=2.0, idle=60.0).count == 2
    assert choose_threads(None, usable=64, quota=0.5, idle=60.0).count == 1
    assert choose_threads(None, usable=4, quota=8.0, idle=4.0).count == 4


def test_cgroup_quota_is_the_tightest_of_the_group_and_its_parents(tmp_path):
    cgroup, root = tmp_path / "cgroup", tmp_path / "fs"
    (root / "docker" / "abc").mkdir(parents=True)
    cgroup.write_text("0::/docker/abc\n", encoding="utf-8")
    (root / "docker" / "abc" / "cpu.max").write_text("max 100000\n", encoding="utf-8")
    assert cgroup_cores(cgroup, root) is None  # no quota anywhere
    (root / "docker" / "cpu.max").write_text("250000 100000\n", encoding="utf-8")
    assert cgroup_cores(cgroup, root) == 2.5
    (root / "docker" / "abc" / "cpu.max").write_text("50000 100000\n", encoding="utf-8")
    assert cgroup_cores(cgroup, root) == 0.5
    cgroup.write_text("4:cpu,cpuacct:/docker/abc\n", encoding="utf-8")  # cgroup v1 only: not read
    assert cgroup_cores(cgroup, root) is None
    assert cgroup_cores(tmp_path / "none", root) is None


def test_this_machine(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads() == Threads(1, "1 thread, OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    chosen = threads()
    assert 1 <= chosen.count <= len(os.sched_getaffinity(0)) and "idle" in chosen.why
