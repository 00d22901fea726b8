"""Loading bad checkpoint files: each problem gets one clear message naming the file, what is
wrong and what to do; nothing from a file's pickle is ever executed."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from matxfer.checkpoint import CheckpointError, load_checkpoint, read_torch_file


class _Touch:
    """Unpickling this object creates ``marker`` (stands for any code a pickle can run)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def good_ckpt(tiny_checkpoint) -> pathlib.Path:
    return tiny_checkpoint


def _cli_error(path, capsys) -> str:
    from matxfer.cli import main

    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_good_checkpoint_loads(good_ckpt):
    assert load_checkpoint(good_ckpt)["tasks"]["band_gap"]["units"] == "eV"


def test_missing_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    assert "nope.ckpt: file not found" in _cli_error(tmp_path / "nope.ckpt", capsys)


def test_empty_file(tmp_path, capsys):
    p = tmp_path / "empty.ckpt"
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.ckpt: the file is empty \(0 bytes\); .*write it again"):
        load_checkpoint(p)
    assert "empty (0 bytes)" in _cli_error(p, capsys)


def test_random_bytes(tmp_path, capsys):
    p = tmp_path / "random.ckpt"
    p.write_bytes(os.urandom(4096).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    with pytest.raises(CheckpointError, match=r"random\.ckpt: not a torch file"):
        load_checkpoint(p)
    assert "not a torch file" in _cli_error(p, capsys)


def test_text_file(tmp_path):
    p = tmp_path / "notes.ckpt"
    p.write_text("this is not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError, match="not a torch file"):
        load_checkpoint(p)


@pytest.mark.parametrize("keep", [0.001, 0.04, 0.5, 0.999])
def test_truncated_checkpoint(good_ckpt, tmp_path, capsys, keep):
    data = good_ckpt.read_bytes()
    p = tmp_path / "cut.ckpt"
    p.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt: truncated") as exc:
        load_checkpoint(p)
    assert "Errno" not in str(exc.value) and "write it again" in str(exc.value)
    assert "truncated" in _cli_error(p, capsys)


def test_truncated_legacy_file(tmp_path):
    full = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(5000)}, full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    for n in (20, 200, len(data) // 2, len(data) - 10):
        p = tmp_path / "cut.pt"
        p.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=r"cut\.pt: truncated"):
            read_torch_file(p)


def test_dict_without_state_dict(tmp_path, capsys):
    p = tmp_path / "other.ckpt"
    torch.save({"format_version": 1, "model_config": {}, "graph": {}}, p)
    with pytest.raises(CheckpointError, match=r"not a matxfer checkpoint: missing keys \['tasks', 'state_dict'\]"):
        load_checkpoint(p)
    q = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(3)}, q)
    with pytest.raises(CheckpointError, match=r"missing keys \['format_version'.*'state_dict'\]"):
        load_checkpoint(q)
    assert "not a matxfer checkpoint: missing keys" in _cli_error(q, capsys)


def test_not_a_dict(tmp_path):
    p = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), p)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict"):
        load_checkpoint(p)


def test_directory(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    with pytest.raises(CheckpointError, match=r"run: is a directory.*model\.ckpt"):
        load_checkpoint(d)
    assert "is a directory" in _cli_error(d, capsys)


def test_unsupported_format_version(good_ckpt, tmp_path, capsys):
    ck = torch.load(good_ckpt, weights_only=True)
    ck["format_version"] = 7
    p = tmp_path / "future.ckpt"
    torch.save(ck, p)
    with pytest.raises(CheckpointError, match=r"format version 7 unsupported.*upgrade matxfer"):
        load_checkpoint(p)
    assert "format version 7" in _cli_error(p, capsys)


def test_pickled_code_is_refused(good_ckpt, tmp_path, capsys):
    marker = tmp_path / "ran"
    ck = torch.load(good_ckpt, weights_only=True)
    ck["provenance"]["note"] = _Touch(marker)
    p = tmp_path / "evil.ckpt"
    torch.save(ck, p)
    marker.unlink(missing_ok=True)  # torch.save does not unpickle, but be sure
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused: its pickle would call or build getattr") as exc:
        load_checkpoint(p)
    assert "weights_only" not in str(exc.value)
    assert not marker.exists()
    err = _cli_error(p, capsys)
    assert "refused" in err and "weights_only" not in err
    assert not marker.exists()
