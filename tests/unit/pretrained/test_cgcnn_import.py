"""Import of the original CGCNN checkpoints: parity with the original code's predictions,
checkpoint contents, the original neighbour lists (ties and padding), CLI and transfer use."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch.nn import functional as F

from matxfer.paths import pretrained_dir
from matxfer.pretrained.cgcnn_import import (
    COMPAT_FIELD,
    SOURCE,
    TARGETS,
    CompatPredictor,
    cgcnn_neighbor_list,
    compare_with_reference,
    compat_supported,
    import_cgcnn,
    read_original_checkpoint,
    target_from_filename,
)

torch.set_num_threads(1)

PARITY_MODELS = ["formation-energy-per-atom", "band-gap", "bulk-moduli", "shear-moduli"]
TOL = 1e-4


@pytest.fixture(scope="module")
def cgcnn_dir() -> Path:
    d = pretrained_dir() / "cgcnn"
    if (
        not (d / "formation-energy-per-atom.pth.tar").is_file()
        or not (d / "atom_init.json").is_file()
    ):
        pytest.skip(
            f"original CGCNN checkpoints not found in {d} (shared/pretrained is absent; set "
            "MATXFER_PRETRAINED_DIR)"
        )
    return d


@pytest.fixture(scope="module")
def reference_dir(cgcnn_dir) -> Path:
    d = cgcnn_dir / "reference_predictions"
    if not (d / "cifs").is_dir():
        pytest.skip(f"reference predictions not found in {d}")
    return d


@pytest.fixture(scope="module")
def imported(cgcnn_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("imported")
    return {
        m: import_cgcnn(cgcnn_dir / f"{m}.pth.tar", cgcnn_dir / "atom_init.json", out / f"{m}.ckpt")
        for m in PARITY_MODELS
    }


def _reference(reference_dir: Path, model: str) -> dict[str, float]:
    with open(reference_dir / f"{model}.csv", newline="") as fh:
        return {r["material_id"]: float(r["prediction"]) for r in csv.DictReader(fh)}


# ---------------------------------------------------------------------------------------
# an independent re-implementation of the original forward pass, for the padding test
# ---------------------------------------------------------------------------------------


def _original_inputs(structure: Structure, table: dict, radius=8.0, m=12):
    """Atom features, Gaussian features [N, M, 41] and neighbour indices [N, M] as the
    original CIFData builds them (padding: atom 0 at radius + 1)."""
    atom_fea = np.vstack([table[str(site.specie.number)] for site in structure])
    idx, dist = [], []
    for nbrs in structure.get_all_neighbors(radius, include_index=True):
        nbrs = sorted(nbrs, key=lambda x: x[1])[:m]
        idx.append([x[2] for x in nbrs] + [0] * (m - len(nbrs)))
        dist.append([x[1] for x in nbrs] + [radius + 1.0] * (m - len(nbrs)))
    centres = np.arange(0.0, radius + 0.2, 0.2)
    gauss = np.exp(-((np.asarray(dist)[..., None] - centres) ** 2) / 0.2**2)
    return (
        torch.tensor(atom_fea, dtype=torch.float32),
        torch.tensor(gauss, dtype=torch.float32),
        torch.tensor(idx, dtype=torch.long),
    )


def _original_forward(sd: dict, atom_fea, nbr_fea, nbr_idx, n_conv: int) -> float:
    def bn(x, p):
        return F.batch_norm(
            x,
            sd[p + ".running_mean"],
            sd[p + ".running_var"],
            sd[p + ".weight"],
            sd[p + ".bias"],
            False,
        )

    x = F.linear(atom_fea, sd["embedding.weight"], sd["embedding.bias"])
    n, m = nbr_idx.shape
    for k in range(n_conv):
        p = f"convs.{k}"
        total = torch.cat([x.unsqueeze(1).expand(n, m, x.shape[1]), x[nbr_idx], nbr_fea], dim=2)
        gated = F.linear(total, sd[p + ".fc_full.weight"], sd[p + ".fc_full.bias"])
        gated = bn(gated.view(n * m, -1), p + ".bn1").view(n, m, -1)
        gate, core = gated.chunk(2, dim=2)
        summed = bn((torch.sigmoid(gate) * F.softplus(core)).sum(1), p + ".bn2")
        x = F.softplus(x + summed)
    crys = F.softplus(x.mean(0, keepdim=True))
    crys = F.softplus(F.linear(crys, sd["conv_to_fc.weight"], sd["conv_to_fc.bias"]))
    return float(F.linear(crys, sd["fc_out.weight"], sd["fc_out.bias"]))


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", PARITY_MODELS)
def test_parity_with_original_code(imported, reference_dir, model):
    """Predictor with the original neighbour lists reproduces the original code's numbers."""
    res = compare_with_reference(imported[model], reference_dir, model)
    assert res["n"] == 50
    assert res["max_abs_dev"] < TOL, res


@pytest.mark.parametrize("model", PARITY_MODELS)
def test_matxfer_predict_files(imported, reference_dir, model):
    """``matxfer predict`` (predict_files) on the CIF folder.

    With graph settings that honour the compatibility flag every crystal matches. Without
    it (matxfer's own neighbour lists), exactly the crystals where equidistant neighbours
    compete for the last of the 12 places may differ; all others match.
    """
    from matxfer.data.graphs import neighbor_list
    from matxfer.predict import predict_files

    ref = _reference(reference_dir, model)
    results, errors = predict_files(imported[model], [reference_dir / "cifs"])
    assert not errors
    (task,) = {k for r in results for k in r} - {"name", "formula", "isolated_atoms"}
    assert all(r["isolated_atoms"] == 0 for r in results)
    devs = {Path(r["name"]).stem: abs(r[task] - ref[Path(r["name"]).stem]) for r in results}
    assert len(devs) == 50
    if compat_supported():
        assert max(devs.values()) < TOL
        return
    for mid, dev in devs.items():
        if dev < TOL:
            continue
        s = Structure.from_file(str(reference_dir / "cifs" / f"{mid}.cif"))
        ours = neighbor_list(s, 8.0, 12)
        orig, _ = cgcnn_neighbor_list(s)
        same = all(
            sorted(ours.src[ours.dst == i].tolist()) == sorted(orig.src[orig.dst == i].tolist())
            for i in range(len(s))
        )
        assert not same, f"{mid} deviates by {dev} although the neighbour sets agree"


def test_checkpoint_contents(imported, cgcnn_dir):
    from matxfer.checkpoint import file_sha256
    from matxfer.data.atom_features import AtomFeaturizer

    path = imported["bulk-moduli"]
    ck = torch.load(path, map_location="cpu", weights_only=True)
    orig = read_original_checkpoint(cgcnn_dir / "bulk-moduli.pth.tar")
    assert ck["provenance"]["source"] == SOURCE
    assert ck["provenance"]["source_sha256"] == file_sha256(cgcnn_dir / "bulk-moduli.pth.tar")
    assert ck["provenance"][COMPAT_FIELD] is True
    task = ck["tasks"]["log10_bulk_modulus_vrh"]
    assert task["units"] == "log10(GPa)" and task["kind"] == "scalar"
    feat = AtomFeaturizer.from_state(ck["atom_features"])
    assert ck["graph"]["atom_features"] == feat.spec == f"table:{feat.sha256}"
    assert feat.spec == AtomFeaturizer.from_table(cgcnn_dir / "atom_init.json").spec
    assert ck["graph"]["cutoff"] == 8.0 and ck["graph"]["max_neighbors"] == 12
    assert ck["model_config"]["backbone"]["name"] == "cgcnn"
    assert ck["model_config"]["backbone"]["n_conv"] == 4
    head = ck["model_config"]["heads"]["log10_bulk_modulus_vrh"]
    assert head == {
        "name": "scalar",
        "hidden": [32],
        "act": "softplus",
        "input_activation": True,
        "reduce": "mean",
    }
    sd = ck["state_dict"]
    assert float(sd["normalizers.log10_bulk_modulus_vrh.mean"]) == pytest.approx(
        orig.mean, rel=1e-6
    )
    assert float(sd["normalizers.log10_bulk_modulus_vrh.std"]) == pytest.approx(orig.std, rel=1e-6)
    assert torch.equal(
        sd["backbone.convs.2.fc_full.weight"], orig.state_dict["convs.2.fc_full.weight"]
    )
    assert torch.equal(
        sd["heads.log10_bulk_modulus_vrh.mlp.linears.1.weight"], orig.state_dict["fc_out.weight"]
    )
    n_params = sum(
        v.numel()
        for k, v in sd.items()
        if not k.startswith("normalizers") and "num_batches" not in k
    )
    assert n_params == 98177  # the count in shared/pretrained/README.md (running stats included)


def test_all_regression_files_import(cgcnn_dir, tmp_path):
    for stem, (target, units) in TARGETS.items():
        path = cgcnn_dir / f"{stem}.pth.tar"
        if not path.is_file():
            continue
        assert target_from_filename(path) == (target, units)
        out = import_cgcnn(path, cgcnn_dir / "atom_init.json", tmp_path / f"{stem}.ckpt")
        pred = CompatPredictor.from_checkpoint(out)
        assert list(pred.tasks) == [target] and pred.tasks[target].units == units
        s = Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        )
        (res,) = pred.predict_structures([s], ["NaCl"])
        assert np.isfinite(res[target])


def test_classifier_is_refused(cgcnn_dir, tmp_path):
    path = cgcnn_dir / "semi-metal-classification.pth.tar"
    if not path.is_file():
        pytest.skip("no semi-metal classifier here")
    orig = read_original_checkpoint(path)  # a numpy float inside, on the allow-list
    assert orig.task == "classification"
    with pytest.raises(ValueError, match="classification"):
        import_cgcnn(path, cgcnn_dir / "atom_init.json", tmp_path / "x.ckpt")


def test_unknown_file_name_needs_target(cgcnn_dir, tmp_path):
    renamed = tmp_path / "my-model.pth.tar"
    shutil.copy(cgcnn_dir / "band-gap.pth.tar", renamed)
    with pytest.raises(ValueError, match="--target and --units"):
        import_cgcnn(renamed, cgcnn_dir / "atom_init.json", tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="identifier"):
        import_cgcnn(
            renamed,
            cgcnn_dir / "atom_init.json",
            tmp_path / "x.ckpt",
            target="band gap",
            units="eV",
        )
    out = import_cgcnn(
        renamed, cgcnn_dir / "atom_init.json", tmp_path / "x.ckpt", target="gap_pbe", units="eV"
    )
    assert CompatPredictor.from_checkpoint(out).tasks["gap_pbe"].units == "eV"


def test_wrong_table_width(cgcnn_dir, tmp_path):
    table = json.loads((cgcnn_dir / "atom_init.json").read_text())
    small = {k: v[:50] for k, v in table.items()}
    (tmp_path / "small.json").write_text(json.dumps(small))
    with pytest.raises(ValueError, match="50 columns"):
        import_cgcnn(cgcnn_dir / "band-gap.pth.tar", tmp_path / "small.json", tmp_path / "x.ckpt")


def test_padding_matches_original(imported, cgcnn_dir):
    """Atoms with fewer than 12 neighbours within 8 A are padded as in the original code."""
    table = json.loads((cgcnn_dir / "atom_init.json").read_text())
    s = Structure(Lattice.orthorhombic(3.0, 12.0, 14.0), ["Si", "O"], [[0, 0, 0], [0.3, 0.4, 0.45]])
    nl, n_padded = cgcnn_neighbor_list(s)
    assert n_padded > 0
    assert np.bincount(nl.dst).tolist() == [12, 12]
    pred = CompatPredictor.from_checkpoint(imported["formation-energy-per-atom"])
    g = pred.graph(s, "sparse")
    assert int(g.n_padded) == n_padded
    (res,) = pred.predict_structures([s], ["sparse"])
    orig = read_original_checkpoint(cgcnn_dir / "formation-energy-per-atom.pth.tar")
    y = (
        _original_forward(orig.state_dict, *_original_inputs(s, table), orig.n_conv) * orig.std
        + orig.mean
    )
    assert res["formation_energy_per_atom"] == pytest.approx(y, abs=1e-5)


def test_cli_import(cgcnn_dir, tmp_path, capsys):
    from matxfer.cli import main

    out = tmp_path / "runs" / "imported" / "band-gap.ckpt"
    rc = main(["import-cgcnn", str(cgcnn_dir / "band-gap.pth.tar"), "--out", str(out)])
    assert rc == 0 and out.is_file()
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(out)
    rc = main(
        [
            "import-cgcnn",
            str(cgcnn_dir / "semi-metal-classification.pth.tar"),
            "--out",
            str(tmp_path / "c.ckpt"),
        ]
    )
    assert rc == 2


def test_freeze_recipes_on_imported_backbone(imported):
    """The imported backbone supports the seed-001 recipes (embedding + first k convs frozen)."""
    from matxfer.checkpoint import load_checkpoint, model_from_checkpoint
    from matxfer.transfer import apply_recipe

    ck = load_checkpoint(imported["formation-energy-per-atom"])
    for k in (1, 2, 3):
        model, _ = model_from_checkpoint(ck)
        before = {n: p.clone() for n, p in model.named_parameters()}
        info = apply_recipe(model, f"freeze:{k}")
        frozen = set(info["frozen"])
        assert "backbone.embedding.weight" in frozen
        assert f"backbone.convs.{k - 1}.fc_full.weight" in frozen
        assert f"backbone.convs.{k}.fc_full.weight" not in frozen
        assert info["reinitialised"] == [f"backbone.convs.{j}" for j in range(k, 4)]
        for n in frozen:
            assert torch.equal(before[n], dict(model.named_parameters())[n])


def test_study_config_loads():
    from matxfer.study.config import load_study

    path = Path(__file__).resolve().parents[3] / "configs" / "seed001_original_cgcnn.yaml"
    study = load_study(path)
    pre = {p.name: p for p in study.pretrain}
    assert pre["eform"].importer == "cgcnn:formation-energy-per-atom"
    assert pre["bulk"].importer == "cgcnn:bulk-moduli"
    assert pre["shear"].importer == "cgcnn:shear-moduli"
    assert pre["combined"].config
    kinds = {(r.pretrained, r.kind) for r in study.recipes}
    for name in ("eform", "bulk", "shear", "combined"):
        for k in (1, 2, 3):
            assert (name, f"freeze:{k}") in kinds
    assert study.targets[0].data["targets"] == ["band_gap"]


class _RunsShell:
    """Unpickling this object runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


class _Touches:
    """Unpickling this object creates ``marker`` through ``pathlib.Path.touch``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", [_RunsShell, _Touches])
@pytest.mark.parametrize("legacy_format", [False, True])
def test_crafted_file_is_refused(cgcnn_dir, tmp_path, capsys, payload, legacy_format):
    """A .pth.tar whose pickle runs code is refused without running it; --trust-file loads it."""
    from matxfer.checkpoint import CheckpointError
    from matxfer.cli import main

    marker = tmp_path / "code-ran"
    blob = torch.load(cgcnn_dir / "band-gap.pth.tar", map_location="cpu", weights_only=True)
    blob["args"]["note"] = payload(marker)
    evil = tmp_path / "band-gap.pth.tar"
    torch.save(blob, evil, _use_new_zipfile_serialization=not legacy_format)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"band-gap\.pth\.tar: refused: .*--trust-file") as exc:
        import_cgcnn(evil, cgcnn_dir / "atom_init.json", tmp_path / "x.ckpt")
    assert "weights_only" not in str(exc.value)
    assert not marker.exists()
    rc = main(["import-cgcnn", str(evil), "--atom-init", str(cgcnn_dir / "atom_init.json"),
               "--out", str(tmp_path / "y.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "refused" in err[0] and "weights_only" not in err[0]
    assert not marker.exists() and not (tmp_path / "y.ckpt").exists()
    # the explicit opt-in does what it says: it runs the file's code
    rc = main(["import-cgcnn", str(evil), "--atom-init", str(cgcnn_dir / "atom_init.json"),
               "--out", str(tmp_path / "z.ckpt"), "--trust-file"])
    assert marker.exists() and rc == 0


def test_released_files_read_without_full_unpickler(cgcnn_dir, monkeypatch):
    """Every released file (the semi-metal classifier's numpy scalar included) reads with
    weights_only=True and the importer's allow-list."""
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    files = sorted(cgcnn_dir.glob("*.pth.tar"))
    assert files
    for path in files:
        orig = read_original_checkpoint(path)
        assert orig.state_dict["embedding.weight"].ndim == 2
    assert calls and all(c is True for c in calls)


def test_trust_flag_help_states_the_risk(capsys):
    from matxfer.cli import main

    with pytest.raises(SystemExit):
        main(["import-cgcnn", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--trust-file" in text and "arbitrary code" in text
