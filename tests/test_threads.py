"""--threads' default: OMP_NUM_THREADS where set (torchrun's workers get 1), else the cores this
process may use; the count is applied to torch."""

from __future__ import annotations

import os

import pytest

from gradfilter.threads import available_cores, default_threads, use_threads


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("3", 3), ("", None), ("0", None),
                                                 ("many", None)])
def test_the_default_follows_omp_num_threads_where_it_is_a_count(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_threads() == (expected or available_cores())


def test_available_cores_are_this_process_affinity_and_the_count_reaches_torch(monkeypatch):
    import torch

    if hasattr(os, "sched_getaffinity"):
        assert available_cores() == len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert use_threads(1) == 1 and torch.get_num_threads() == 1
        assert use_threads(None) == available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
