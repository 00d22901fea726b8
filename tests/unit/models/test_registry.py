import gzip
import json

import numpy as np
import pytest

from matxfer import keys as K
from matxfer.data.registry import REGISTRY, DataMissingError, get_spec, load_dataset
from matxfer.targets import TARGET_SHAPES

REQUIRED = [
    "mp-elastic-2024",
    "dejong-elastic-2015",
    "mp-elastic-binaries-2025",
    "petousis-dielectric-2017",
    "dejong-piezo-2015",
    "macefield-dielectric-ionic",
    "petretto-dielectric",
    "flla-2015",
    "castelli-perovskites",
    "matbench-phonons",
]


def test_registry_names():
    assert set(REQUIRED) <= set(REGISTRY)
    with pytest.raises(ValueError, match="known datasets"):
        get_spec("nope")
    for spec in REGISTRY.values():
        assert spec.targets and spec.citation and spec.source and spec.files


@pytest.mark.parametrize("name", [n for n in REQUIRED if n != "petretto-dielectric"])
def test_loader_on_real_files(data_dir, name):
    spec = get_spec(name)
    if not spec.available(data_dir):
        pytest.skip(f"{name} not in {data_dir}")
    ds = load_dataset(name, root=data_dir, limit=12)
    assert len(ds.records) + len(ds.failures) == 12
    # unloadable entries fail a label check (the MP 2024 set starts with unstable tensors),
    # never the parser itself
    assert len(ds.records) >= 8, ds.failures
    for _, reason in ds.failures:
        assert reason.startswith(("label ", *spec.targets)), reason
    for rec in ds.records:
        assert set(rec.labels) <= set(spec.targets)
        for t, v in rec.labels.items():
            if t in TARGET_SHAPES:
                want = TARGET_SHAPES[t]
                assert np.asarray(v).shape[1:] == want[1:] if want[0] == -1 else np.asarray(v).shape == want
                assert np.all(np.isfinite(v))
            else:
                assert np.isfinite(v)


def test_missing_file_message(tmp_path):
    with pytest.raises(DataMissingError) as exc:
        load_dataset("flla-2015", root=tmp_path)
    msg = str(exc.value)
    assert "matminer_v0.4.1/flla_2015.csv.gz" in msg and "MATXFER_DATA_DIR" in msg


def _write_extxyz(path, frames):
    lines = []
    for species, pos, cell, eps, becs in frames:
        lat = " ".join(f"{x:.6f}" for x in np.asarray(cell).ravel())
        e = " ".join(f"{x:.6f}" for x in np.asarray(eps).ravel())
        lines.append(str(len(species)))
        lines.append(f'Lattice="{lat}" Properties=species:S:1:pos:R:3:becs:R:9 eps="{e}" pbc="T T T"')
        for s, p, b in zip(species, pos, becs):
            lines.append(" ".join([s, *(f"{x:.6f}" for x in p), *(f"{x:.6f}" for x in np.ravel(b))]))
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def test_petretto_parser_on_written_file(tmp_path):
    d = tmp_path / "petretto_phonon_becs_eps"
    d.mkdir()
    cell = np.eye(3) * 5.64
    z_na = np.eye(3) * 1.1
    frames = [
        (["Na", "Cl"], [[0, 0, 0], [2.82, 2.82, 2.82]], cell, np.eye(3) * 2.4, [z_na, -z_na]),
        (["Na", "Cl"], [[0, 0, 0], [2.82, 2.82, 2.82]], cell, np.eye(3) * 2.5, [z_na, -z_na]),
        # third frame: eps with NaN -> skipped and reported, not fatal
        (["Na", "Cl"], [[0, 0, 0], [2.82, 2.82, 2.82]], cell, np.full((3, 3), np.nan), [z_na, -z_na]),
    ]
    _write_extxyz(d / "phonon_becs_epsilon.xyz.gz", frames)
    ds = load_dataset("petretto-dielectric", root=tmp_path)
    assert ds.ids == ["petretto-00000", "petretto-00001"]
    assert ds.failures[0][0] == "petretto-00002" and "NaN" in ds.failures[0][1]
    rec = ds.records[1]
    np.testing.assert_allclose(rec.labels[K.DIELECTRIC_ELECTRONIC], np.eye(3) * 2.5)
    np.testing.assert_allclose(rec.labels[K.BORN_CHARGES][1], -z_na)


def test_bad_entries_are_skipped_not_fatal(tmp_path, si):
    """A split-JSON file in the Petousis layout with one good and three bad rows."""
    cols = ["material_id", "structure", "e_total", "e_electronic", "band_gap", "n"]
    good = ["mp-1", si.as_dict(), str(np.eye(3).tolist()), str(np.eye(3).tolist()), 1.0, 1.0]
    bad_struct = ["mp-2", {"lattice": "garbage"}, good[2], good[3], 1.0, 1.0]
    bad_shape = ["mp-3", si.as_dict(), str([[1, 0], [0, 1]]), good[3], 1.0, 1.0]
    asym = ["mp-4", si.as_dict(), str([[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]), good[3], 1.0, 1.0]
    d = tmp_path / "matminer_figshare"
    d.mkdir()
    blob = {"columns": cols, "index": [0, 1, 2, 3], "data": [good, bad_struct, bad_shape, asym]}
    with gzip.open(d / "dielectric_constant.json.gz", "wt") as fh:
        json.dump(blob, fh)
    ds = load_dataset("petousis-dielectric-2017", root=tmp_path)
    assert ds.ids == ["mp-1"]
    reasons = dict(ds.failures)
    assert set(reasons) == {"mp-2", "mp-3", "mp-4"}
    assert "shape" in reasons["mp-3"] and "symmetry" in reasons["mp-4"]


def test_ieee_frame_pairs_piezo_with_structure(data_dir):
    """IEEE-frame piezo tensors agree with the point group of the rotated structure."""
    from matxfer.tensors import point_group_rotations, symmetry_error

    if not get_spec("dejong-piezo-2015").available(data_dir):
        pytest.skip("piezo set absent")
    ds = load_dataset("dejong-piezo-2015", root=data_dir, limit=40)
    errs = [
        symmetry_error(r.labels[K.PIEZO_TENSOR], point_group_rotations(r.structure))
        for r in ds.records
        if np.abs(r.labels[K.PIEZO_TENSOR]).max() > 1e-3
    ]
    assert np.mean(np.array(errs) < 0.05) > 0.7


def test_mp_elastic_tensors_obey_the_point_group_of_their_structures(data_dir):
    """The IEEE pairing of the MP 2024 set: tensors consistent with the structure's symmetry,
    trigonal and hexagonal crystals included (the raw tensors are not, for most of those)."""
    from matxfer.data.validate import ValidationSettings, check_record

    spec = get_spec("mp-elastic-2024")
    if not spec.available(data_dir):
        pytest.skip(f"mp-elastic-2024 not in {data_dir}")
    ds = load_dataset("mp-elastic-2024", root=data_dir, limit=60)
    results = [check_record(r, ValidationSettings()) for r in ds.records]
    broken = [r for r in results if any("point-group" in x for x in r.reasons)]
    systems = {r.crystal_system for r in results}
    assert {"trigonal", "hexagonal", "cubic"} <= systems
    assert len(broken) <= 1, [(r.material_id, r.reasons) for r in broken]


@pytest.mark.parametrize(
    "first", ["matxfer.models.backbones.chgnet", "matxfer.models.backbones.sevennet",
              "matxfer.models.registry", "matxfer.study.runner"]
)
def test_every_backbone_registers_whichever_module_is_imported_first(first):
    import subprocess
    import sys

    code = (f"import logging, {first}, matxfer.models.registry as r; "
            "print(sorted(r.BACKBONES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "chgnet" in out.stdout and "sevennet" in out.stdout
    assert "could not import" not in out.stderr


def test_registry_lists_names_without_importing_their_modules():
    import subprocess
    import sys

    code = ("import sys, matxfer.models.registry as r; names = sorted(r.BACKBONES); "
            "heads = sorted(r.HEADS); "
            "print(names, heads, [m for m in sys.modules if m.startswith('matxfer.models.backbones.') "
            "or m.startswith('matxfer.models.heads.') "
            "or m.startswith('matxfer.pretrained.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, heads, loaded = out.stdout.strip().split("] [")
    assert "'sevennet'" in names and "'local-frame'" in names and "'tensor-product'" in heads
    assert loaded.strip("[]") == "", loaded  # nothing imported to list the names


def test_a_listed_backbone_whose_module_fails_raises_naming_it(monkeypatch):
    from matxfer.models import registry as r

    monkeypatch.setitem(r.BACKBONES._modules, "broken-net", "matxfer.models.backbones._no_such")
    assert "broken-net" in r.BACKBONES
    with pytest.raises(r.RegistryImportError, match=r"broken-net.*_no_such.*could not be imported"):
        r.build_backbone({"name": "broken-net"})
    with pytest.raises(r.RegistryImportError):
        r.BACKBONES.get("broken-net")
    # a module that imports but does not register the name it is listed for
    monkeypatch.setitem(r.HEADS._modules, "ghost-head", "matxfer.models.heads.scalar")
    with pytest.raises(r.RegistryImportError, match="registered no such name"):
        r.HEADS["ghost-head"]
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        r.build_backbone({"name": "nope"})


def test_every_listed_name_is_the_class_its_module_registers():
    from matxfer.models import registry as r

    for table, listed in ((r.BACKBONES, r.BUILTIN_BACKBONES), (r.HEADS, r.BUILTIN_HEADS)):
        for name, module in listed.items():
            cls = table[name]
            assert cls.registry_name == name and cls.__module__ == module


def test_entry_point_plugins_are_listed(monkeypatch):
    from matxfer.models import registry as r

    table = r.LazyTable("backbone", {}, "matxfer.backbones")
    monkeypatch.setattr(r, "_entry_point_modules",
                        lambda group: {"plugin-net": "matxfer.models.backbones.cgcnn"})
    assert list(table) == ["plugin-net"] and table.module_of("plugin-net").endswith("cgcnn")


def test_every_decorated_name_in_the_package_is_in_the_lazy_table():
    """A class registered with @register_backbone / @register_head inside matxfer but missing
    from BUILTIN_BACKBONES / BUILTIN_HEADS would be unreachable by name: fail instead."""
    import ast
    from pathlib import Path

    import matxfer
    from matxfer.models import registry as r

    root = Path(matxfer.__file__).resolve().parent
    found: dict[str, dict[str, str]] = {"register_backbone": {}, "register_head": {}}
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for deco in node.decorator_list:
                    if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                            and deco.func.id in found and deco.args
                            and isinstance(deco.args[0], ast.Constant)):
                        found[deco.func.id][deco.args[0].value] = module
    assert found["register_backbone"] == r.BUILTIN_BACKBONES
    assert found["register_head"] == r.BUILTIN_HEADS
