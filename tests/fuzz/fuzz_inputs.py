"""Generated bad inputs, each beside good ones, for the command-line fuzz test.

:func:`write_fuzz_inputs` writes one folder::

    structures/   good CIF / POSCAR / pymatgen-JSON / extended-XYZ crystals and bad ones
                  (malformed, empty, binary, truncated, disordered, overlapping atoms, a lone
                  atom, unknown elements, non-finite coordinates, a molecule without a cell,
                  a 2,000-atom cell)
    data/         a data directory holding a user dataset in the layout of a registered one
                  (``petousis-dielectric-2017``: ``matminer_figshare/dielectric_constant.json.gz``,
                  pandas ``orient="split"`` JSON) with good rows and rows whose labels are NaN,
                  asymmetric, absurd (1e6), garbled, of the wrong shape or not positive
                  definite, and rows whose structures are bad
    data_binary/, data_truncated/, data_empty/, data_notjson/
                  the same dataset file as binary garbage, a truncated gzip, an empty file and
                  JSON without the expected columns
    checkpoints/  an empty, a truncated and a random-bytes checkpoint, a torch file that is not
                  a matxfer checkpoint, a text file named ``.ckpt``, and hostile pickles that
                  would create ``MARKER`` when unpickled (``hostile.ckpt`` and, with an
                  ``atom_init.json`` beside it, ``hostile.pth.tar`` for ``import-cgcnn``)

:data:`STRUCTURE_CASES` and :data:`DATASET_CASES` say, for each generated input, whether it
must be processed (``None``) or which words its message must contain.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import pathlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

#: file created by the hostile pickles if anything ever unpickles them with code execution
MARKER = "HOSTILE_PICKLE_RAN"

#: dataset the generated data directories are laid out as
DATASET = "petousis-dielectric-2017"
DATASET_FILE = "matminer_figshare/dielectric_constant.json.gz"

#: structure input -> None (must be predicted) or words its error message must contain
STRUCTURE_CASES: dict[str, tuple[str, ...] | None] = {
    "good_si.cif": None,
    "good_nacl.vasp": None,
    "good_zno.json": None,
    "POSCAR_good_batio3": None,
    "big_2000_atoms.cif": None,
    "good_cu.extxyz": None,
    "lone_atom.cif": None,  # predicted, with a warning and isolated_atoms = 1
    "malformed.cif": ("malformed.cif", "built no structure", "not a cif at all", "'five'"),
    "empty.cif": ("empty.cif", "empty (0 bytes)"),
    "empty.json": ("empty.json", "empty (0 bytes)"),
    "binary.cif": ("binary.cif", "binary content"),
    "binary.vasp": ("binary.vasp", "binary content"),
    "truncated.cif": ("truncated.cif", "truncated or malformed"),
    "truncated.json": ("truncated.json", "not valid JSON"),
    "not_a_structure.json": ("not_a_structure.json", "not a pymatgen Structure JSON"),
    "disordered.cif": ("disordered.cif", "partial occupancy"),
    "disordered.json": ("disordered.json", "partial occupancy"),
    "overlapping.cif": ("overlapping.cif", "overlapping atoms"),
    "overlapping.vasp": ("overlapping.vasp", "overlapping atoms"),
    "overlapping.json": ("overlapping.json", "overlapping atoms"),
    "unknown_element.cif": ("unknown_element.cif", "unknown element 'Xx'"),
    "unknown_element.vasp": ("unknown_element.vasp", "unknown element 'Xx'"),
    "unknown_element.json": ("unknown_element.json", "'Xx' is not a valid Element"),
    "nan_coords.vasp": ("nan_coords.vasp", "non-finite atomic coordinates"),
    "molecule.xyz": ("molecule.xyz", "no periodic cell"),
    "truncated.extxyz": ("truncated.extxyz", "could not read structure"),
}

#: dataset entry id -> None (loads and passes validation) or words of its reason
DATASET_CASES: dict[str, tuple[str, ...] | None] = {
    **{f"good-{i}": None for i in range(12)},
    "bad-nan": ("dielectric_total", "NaN"),
    "bad-inf": ("dielectric_total", "NaN or inf"),
    "bad-asymmetric": ("dielectric_total", "index symmetry"),
    "bad-absurd": ("dielectric_total", "1e+06", "plausible maximum"),
    "bad-negative": ("dielectric_total", "positive definite"),
    "bad-shape": ("e_total", "shape"),
    "bad-garbled": ("e_total", "cannot read"),
    "bad-overlapping": ("overlapping atoms",),
    "bad-disordered": ("partial occupancy",),
    "bad-no-sites": ("structure", "at least 1 site"),
    "bad-unknown-element": ("Xx",),
    "bad-structure-garbled": ("structure: not a readable pymatgen structure",),
}

#: whole-file dataset problems: data directory -> words of the message
DATASET_FILE_CASES: dict[str, tuple[str, ...]] = {
    "data_binary": ("dielectric_constant.json.gz", "cannot be read", "gzip"),
    "data_truncated": ("dielectric_constant.json.gz", "cannot be read", "ended before"),
    "data_empty": ("dielectric_constant.json.gz", "the file is empty (0 bytes)"),
    "data_notjson": ("dielectric_constant.json.gz", "cannot be read", "'columns'"),
}

#: checkpoint file -> words of the message
CHECKPOINT_CASES: dict[str, tuple[str, ...]] = {
    "empty.ckpt": ("empty.ckpt", "empty (0 bytes)"),
    "truncated.ckpt": ("truncated.ckpt", "truncated or damaged"),
    "random.ckpt": ("random.ckpt", "not a torch file"),
    "text.ckpt": ("text.ckpt", "not a torch file"),
    "not_matxfer.ckpt": ("not_matxfer.ckpt", "not a matxfer checkpoint"),
    "list.ckpt": ("list.ckpt", "not a matxfer checkpoint"),
    "nan_weights.ckpt": ("nan_weights.ckpt", "NaN or inf"),
    "garbled_pickle.ckpt": ("garbled_pickle.ckpt", "damaged"),
    "hostile.ckpt": ("hostile.ckpt", "refused"),
    "missing.ckpt": ("missing.ckpt", "not found"),
}


class _Touch:
    """Unpickling this object with the full unpickler creates ``marker`` (stands for any code
    a pickle can run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def si() -> Structure:
    return Structure(Lattice.cubic(5.43), ["Si"] * 8, [
        [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
        [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75],
    ])


@functools.cache
def _from_spacegroup(*args) -> Structure:
    return Structure.from_spacegroup(*args)


def nacl() -> Structure:
    return _from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ("Na", "Cl"), ((0, 0, 0), (0.5, 0.5, 0.5))
    ).copy()


def zno() -> Structure:
    return _from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.21), ("Zn", "O"),
        ((1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.382)),
    ).copy()


def batio3() -> Structure:
    return Structure(
        Lattice.tetragonal(3.99, 4.03),
        ["Ba", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.515], [0.5, 0.5, 0.986], [0.5, 0, 0.486], [0, 0.5, 0.486]],
    )


def overlapping() -> Structure:
    """NaCl with a second Cl 0.1 A from the first."""
    s = nacl().copy()
    s.append("Cl", s[-1].coords + np.array([0.1, 0.0, 0.0]), coords_are_cartesian=True)
    return s


def disordered() -> Structure:
    return Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])


def lone_atom() -> Structure:
    return Structure(Lattice.cubic(30.0), ["Cu"], [[0, 0, 0]])


def big_cell() -> Structure:
    """A 2,000-atom cell: the 2-atom bcc Fe cell repeated 10 x 10 x 10."""
    s = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.make_supercell([10, 10, 10])
    return s


def _replace_species(text: str, old: str, new: str) -> str:
    return text.replace(f" {old}", f" {new}").replace(f"{old}\n", f"{new}\n")


def _unknown_element_dict() -> dict:
    d = nacl().as_dict()
    d["sites"][0]["species"][0]["element"] = "Xx"
    d["sites"][0]["label"] = "Xx"
    return d


def _random_bytes(n: int, seed: int) -> bytes:
    """Bytes that start like no structure or torch file (no zip or pickle magic)."""
    raw = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    return b"\x00\xff" + raw.replace(b"PK", b"pk")


def write_structures(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    good_cif = si().to(fmt="cif")
    (folder / "good_si.cif").write_text(good_cif)
    (folder / "good_nacl.vasp").write_text(nacl().to(fmt="poscar"))
    (folder / "good_zno.json").write_text(json.dumps(zno().as_dict()))
    (folder / "POSCAR_good_batio3").write_text(batio3().to(fmt="poscar"))
    (folder / "big_2000_atoms.cif").write_text(big_cell().to(fmt="cif"))
    (folder / "lone_atom.cif").write_text(lone_atom().to(fmt="cif"))

    (folder / "malformed.cif").write_text(
        "data_broken\n_cell_length_a five\n_cell_length_b\nloop_\n_atom_site_label\n"
        "_atom_site_fract_x\n}{ not a cif at all\n"
    )
    (folder / "empty.cif").write_bytes(b"")
    (folder / "empty.json").write_bytes(b"")
    (folder / "binary.cif").write_bytes(_random_bytes(2048, 1))
    (folder / "binary.vasp").write_bytes(_random_bytes(2048, 2))
    (folder / "truncated.cif").write_text(good_cif[: len(good_cif) // 2])
    good_json = json.dumps(zno().as_dict())
    (folder / "truncated.json").write_text(good_json[: len(good_json) // 2])
    (folder / "not_a_structure.json").write_text(json.dumps({"name": "NaCl", "energy": -3.2}))

    (folder / "disordered.cif").write_text(disordered().to(fmt="cif"))
    (folder / "disordered.json").write_text(json.dumps(disordered().as_dict()))
    ov = overlapping()
    (folder / "overlapping.cif").write_text(ov.to(fmt="cif"))
    (folder / "overlapping.vasp").write_text(ov.to(fmt="poscar"))
    (folder / "overlapping.json").write_text(json.dumps(ov.as_dict()))

    (folder / "unknown_element.cif").write_text(_replace_species(nacl().to(fmt="cif"), "Na", "Xx"))
    lines = nacl().to(fmt="poscar").splitlines()
    lines[5] = lines[5].replace("Na", "Xx")  # the species line
    (folder / "unknown_element.vasp").write_text("\n".join(lines) + "\n")
    (folder / "unknown_element.json").write_text(json.dumps(_unknown_element_dict()))
    poscar = nacl().to(fmt="poscar").splitlines()
    poscar[-1] = "nan nan nan Cl"
    (folder / "nan_coords.vasp").write_text("\n".join(poscar) + "\n")

    from ase.build import bulk, molecule
    from ase.io import write

    write(folder / "good_cu.extxyz", bulk("Cu", "fcc", 3.61, cubic=True), format="extxyz")
    write(folder / "molecule.xyz", molecule("H2O"), format="extxyz")  # no Lattice: no cell
    frames = folder / "two_frames.tmp"
    write(frames, [bulk("Cu", "fcc", 3.61, cubic=True), bulk("Al", "fcc", 4.05, cubic=True)],
          format="extxyz")
    text = frames.read_text()
    frames.unlink()
    (folder / "truncated.extxyz").write_text(text[: len(text) // 2 + 10])
    return folder


def _eps(scale: float) -> list[list[float]]:
    return (np.eye(3) * scale).tolist()


def _dataset_rows() -> list[list]:
    """Rows ``[material_id, structure, e_total, e_electronic, band_gap, n]``."""
    goods = [si(), nacl(), zno(), batio3()]
    rows = []
    for i in range(12):
        s = goods[i % len(goods)].copy()
        s.scale_lattice(s.volume * (1.0 + 0.02 * i))
        e_el = 2.0 + 0.5 * i
        rows.append([f"good-{i}", s.as_dict(), str(_eps(e_el + 3.0)), str(_eps(e_el)), 1.0, 1.5])
    nan = _eps(12.0)
    nan[0][0] = float("nan")
    inf = _eps(12.0)
    inf[1][1] = float("inf")
    asym = [[12.0, 3.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 12.0]]
    neg = [[12.0, 0.0, 0.0], [0.0, -4.0, 0.0], [0.0, 0.0, 12.0]]
    eye = str(_eps(1.0))
    good_s = si().as_dict()
    no_sites = si().as_dict()
    no_sites["sites"] = []
    rows += [
        # str(list) writes NaN/inf as `nan`/`inf`, as the real file's Python-literal strings
        ["bad-nan", good_s, str(nan), eye, 1.0, 1.0],
        ["bad-inf", good_s, str(inf), eye, 1.0, 1.0],
        ["bad-asymmetric", good_s, str(asym), eye, 1.0, 1.0],
        ["bad-absurd", good_s, str(_eps(1e6)), eye, 1.0, 1.0],
        ["bad-negative", good_s, str(neg), eye, 1.0, 1.0],
        ["bad-shape", good_s, str([[12.0, 0.0], [0.0, 12.0]]), eye, 1.0, 1.0],
        ["bad-garbled", good_s, "[[1, 2], oops", eye, 1.0, 1.0],
        ["bad-overlapping", overlapping().as_dict(), str(_eps(12.0)), eye, 1.0, 1.0],
        ["bad-disordered", disordered().as_dict(), str(_eps(12.0)), eye, 1.0, 1.0],
        ["bad-no-sites", no_sites, str(_eps(12.0)), eye, 1.0, 1.0],
        ["bad-unknown-element", _unknown_element_dict(), str(_eps(12.0)), eye, 1.0, 1.0],
        ["bad-structure-garbled", {"lattice": "oops", "sites": 3}, str(_eps(12.0)), eye, 1.0, 1.0],
    ]
    return rows


def _write_split_json(path: Path, rows: list[list]) -> None:
    cols = ["material_id", "structure", "e_total", "e_electronic", "band_gap", "n"]
    blob = {"columns": cols, "index": list(range(len(rows))), "data": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        json.dump(blob, fh)


def write_datasets(root: Path) -> Path:
    """The data directories; returns the one with the good and bad rows."""
    data = root / "data"
    _write_split_json(data / DATASET_FILE, _dataset_rows())
    good = (data / DATASET_FILE).read_bytes()
    for name, content in {
        "data_binary": _random_bytes(4096, 3),
        "data_truncated": good[: len(good) // 2],
        "data_empty": b"",
        "data_notjson": gzip.compress(b'{"rows": [1, 2, 3]}', mtime=0),
    }.items():
        p = root / name / DATASET_FILE
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return data


def _overwrite_members(ckpt: bytes, fill: bytes, which) -> bytes:
    """``ckpt`` (a torch zip archive) with the stored bytes of the members ``which(name)``
    selects overwritten by ``fill`` repeated (the archive's directory stays intact)."""
    import io
    import struct
    import zipfile

    out = bytearray(ckpt)
    for info in zipfile.ZipFile(io.BytesIO(ckpt)).infolist():
        if not which(info.filename) or info.file_size == 0:
            continue
        o = info.header_offset
        n_name, n_extra = struct.unpack("<HH", out[o + 26 : o + 30])
        start = o + 30 + n_name + n_extra
        out[start : start + info.file_size] = (fill * info.file_size)[: info.file_size]
    return bytes(out)


def write_checkpoints(folder: Path, good_checkpoint: Path, marker: Path) -> Path:
    """Bad checkpoints made from ``good_checkpoint``; the hostile ones would touch ``marker``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    good = Path(good_checkpoint).read_bytes()
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (folder / "random.ckpt").write_bytes(_random_bytes(4096, 4))
    # every weight of 64 bytes or more all ones: NaN in float32 and float64
    (folder / "nan_weights.ckpt").write_bytes(
        _overwrite_members(good, b"\xff", lambda n: "/data/" in n and not n.endswith("/data/0"))
    )
    (folder / "garbled_pickle.ckpt").write_bytes(
        _overwrite_members(good, b"\x13\x37", lambda n: n.endswith("data.pkl"))
    )
    (folder / "text.ckpt").write_text("this is a CIF, not a checkpoint\n" + si().to(fmt="cif"))
    torch.save({"weights": torch.zeros(3), "epoch": 4}, folder / "not_matxfer.ckpt")
    torch.save([torch.zeros(2), 1.0], folder / "list.ckpt")
    torch.save({"state_dict": {}, "payload": _Touch(marker)}, folder / "hostile.ckpt")
    torch.save(
        {"state_dict": {"embedding.weight": torch.zeros(4, 92)}, "args": _Touch(marker)},
        folder / "hostile.pth.tar",
    )
    table = {str(z): [float(z % 2), float(z % 3)] for z in range(1, 101)}
    (folder / "atom_init.json").write_text(json.dumps(table))
    return folder


TRAIN_CONFIG = """\
name: fuzz
data:
  datasets: [petousis-dielectric-2017]
  targets: [dielectric_total]
  data_dir: {data_dir}
  split: {{fractions: [0.5, 0.25, 0.25], seed: 0}}
model:
  backbone: {{name: cgcnn, width: 8, n_conv: 1}}
  heads: {{dielectric_total: {{name: edge-tensor}}}}
optim: {{epochs: 1, batch_size: 4, lr: 0.003, patience: 0}}
trainer: {{progress: false}}
"""


def write_train_config(path: Path, data_dir: Path) -> Path:
    """A tiny run config (a 1-layer CGCNN with an edge tensor head, one epoch) on a data dir."""
    path.write_text(TRAIN_CONFIG.format(data_dir=data_dir))
    return path


def write_bad_configs(folder: Path) -> dict[str, tuple[str, ...]]:
    """Run configs that must be refused: file name -> words of the message."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.yaml").write_text("name: x\ndata: [unclosed\n")
    (folder / "binary.yaml").write_bytes(_random_bytes(256, 5))
    (folder / "empty.yaml").write_bytes(b"")
    (folder / "bad_value.yaml").write_text(
        "name: x\ndata: {datasets: [petousis-dielectric-2017], targets: [dielectric_total]}\n"
        "optim: {lr: fast}\n"
    )
    (folder / "unknown_key.yaml").write_text(
        "name: x\ndata: {datasets: [petousis-dielectric-2017], targets: [dielectric_total]}\n"
        "optim: {learning_rate: 0.1}\n"
    )
    return {
        "broken.yaml": ("broken.yaml", "not valid YAML"),
        "binary.yaml": ("binary.yaml", "not a YAML text file"),
        "empty.yaml": ("empty.yaml", "the config is empty"),
        "bad_value.yaml": ("optim.lr", "fast"),
        "unknown_key.yaml": ("learning_rate",),
    }


@dataclass
class CliRun:
    """One in-process ``matxfer`` command: exit code, standard output, standard error (with
    log records at WARNING and above)."""

    argv: list[str]
    rc: int
    out: str
    err: str

    @property
    def message(self) -> str:
        """The first line of standard error that is not a log record or a Python warning, else
        the first line of standard error, else of standard output."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        ours = [
            line for line in lines
            if not line.startswith(("WARNING ", "INFO ", "  ")) and "Warning:" not in line
        ]
        pick = ours or lines or self.out.splitlines() or [""]
        return pick[0]


def run_cli(argv: list[str]) -> CliRun:
    """``matxfer.cli.main(argv)`` with its output captured; argparse's exit becomes the code."""
    import contextlib
    import io
    import logging

    from matxfer.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)  # also makes main's logging.basicConfig a no-op
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = int(main([str(a) for a in argv]) or 0)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.removeHandler(handler)
    return CliRun([str(a) for a in argv], rc, out.getvalue(), err.getvalue())


def strict_json(text: str):
    """``json.loads`` that refuses NaN and infinities."""

    def refuse(token: str):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def write_fuzz_inputs(root: Path, good_checkpoint: Path | None = None) -> dict[str, Path]:
    """Write every generated input under ``root``; checkpoints need a good one to damage."""
    root = Path(root)
    out = {
        "root": root,
        "structures": write_structures(root / "structures"),
        "data": write_datasets(root),
        "marker": root / MARKER,
    }
    if good_checkpoint is not None:
        out["checkpoints"] = write_checkpoints(root / "checkpoints", good_checkpoint, out["marker"])
    return out


if __name__ == "__main__":  # pragma: no cover - write a folder to look at
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz_inputs")
    print(write_fuzz_inputs(target)["root"], os.listdir(target))
