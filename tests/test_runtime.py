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
