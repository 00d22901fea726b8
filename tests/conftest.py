"""Shared fixtures: small structures built in code, and the real data directory."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

torch.set_num_threads(int(os.environ.get("MATXFER_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes caches into its own temporary directory unless it sets one."""
    if "MATXFER_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("MATXFER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def f64():
    """float64 default dtype for the duration of one test (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def data_dir():
    """The real dataset directory; tests using it are skipped (with a message) if absent."""
    from matxfer.paths import data_dir as _dd

    d = _dd()
    if not (d / "README.md").is_file() and not any(d.glob("*/*.gz")):
        pytest.skip(f"real data directory not found at {d} (set MATXFER_DATA_DIR)")
    return d


def _si():
    return Structure(Lattice.cubic(5.43), ["Si"] * 8, [
        [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
        [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75],
    ])


@pytest.fixture(scope="session")
def si():
    return _si()


@pytest.fixture(scope="session")
def nacl():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def zno():
    """Wurtzite ZnO (polar, point group 6mm)."""
    return Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
    )


@pytest.fixture(scope="session")
def batio3():
    """Tetragonal BaTiO3 (P4mm, 5 atoms, polar)."""
    return Structure(
        Lattice.tetragonal(3.99, 4.03),
        ["Ba", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.515], [0.5, 0.5, 0.986], [0.5, 0, 0.486], [0, 0.5, 0.486]],
    )


@pytest.fixture(scope="session")
def skewed():
    """A triclinic cell with three species."""
    rng = np.random.default_rng(7)
    lat = Lattice.from_parameters(4.1, 5.3, 6.2, 71, 97, 112)
    return Structure(lat, ["Li", "Fe", "O", "O"], rng.random((4, 3)))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small untrained CGCNN checkpoint (one scalar task, band_gap in eV)."""
    from matxfer.checkpoint import build_checkpoint, save_checkpoint
    from matxfer.data.graphs import GraphSettings
    from matxfer.models.registry import build_model
    from matxfer.tasks import SCALAR, Task

    tasks = {"band_gap": Task("band_gap", SCALAR, None, "eV")}
    model = build_model(
        {"backbone": {"name": "cgcnn", "width": 8, "n_conv": 1}, "heads": {"band_gap": {"name": "scalar"}}},
        tasks,
    )
    ck = build_checkpoint(model, tasks, GraphSettings().to_dict(), None, split=None)
    return save_checkpoint(ck, tmp_path_factory.mktemp("tiny") / "model.ckpt")
