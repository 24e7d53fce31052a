"""Seeding and device selection."""

import numpy as np
import pytest
import torch

from analysis_lib.plotting import ordered_colors, panel_grid
from analysis_lib.runtime import get_device, seed_everything


def test_same_seed_same_numbers_everywhere():
    rng = seed_everything(3)
    a = (rng.normal(size=3), np.random.rand(2), torch.rand(2))
    rng = seed_everything(3)
    b = (rng.normal(size=3), np.random.rand(2), torch.rand(2))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.allclose(seed_everything(4).normal(size=3), a[0])


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed_is_named(seed):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(seed)


def test_device_selection(monkeypatch):
    monkeypatch.delenv("ANALYSIS_LIB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device().type == expected
    assert get_device("cpu").type == "cpu"
    monkeypatch.setenv("ANALYSIS_LIB_DEVICE", "cpu")
    assert get_device().type == "cpu"
    with pytest.raises(ValueError, match="prefer"):
        get_device("tpu")
    monkeypatch.setenv("ANALYSIS_LIB_DEVICE", "gpu")
    with pytest.raises(ValueError, match="ANALYSIS_LIB_DEVICE"):
        get_device()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            get_device("cuda")


def test_palette_and_grid():
    cols = ordered_colors(5)
    assert len(cols) == 5 and len(set(cols)) == 5
    with pytest.raises(ValueError, match="n"):
        ordered_colors(0)
    fig, axes = panel_grid(5, ncols=3)
    assert len(axes) == 5 and sum(ax.get_visible() for ax in fig.axes) == 5


def test_each_launched_process_gets_its_own_gpu(monkeypatch):
    import torch

    from analysis_lib.runtime import get_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert get_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert get_device() == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert get_device("cpu") == torch.device("cpu")


def test_set_cpu_threads_caps_numpy_blas_at_one_thread_and_says_what_it_was():
    from threadpoolctl import threadpool_info, threadpool_limits

    from analysis_lib import runtime

    with threadpool_limits(limits=None):  # restored after the test
        before = runtime.set_blas_threads(2)
        assert before is None or before >= 1
        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        assert all(p["num_threads"] <= 2 for p in blas)

        torch_threads = torch.get_num_threads()
        try:
            runtime.set_cpu_threads(1)
            assert all(p["num_threads"] == runtime.BLAS_THREADS == 1 for p in threadpool_info()
                       if p.get("user_api") == "blas")
        finally:
            torch.set_num_threads(torch_threads)
