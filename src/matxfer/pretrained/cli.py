"""``matxfer import-cgcnn``, ``import-chgnet`` and ``import-sevennet``: third-party weights as
matxfer checkpoints.

Imported by :mod:`matxfer.cli` as a plugin; it imports nothing heavy. The ``chgnet`` and
``sevennet`` backbones are registered by :mod:`matxfer.models.registry`, which imports their
modules when models are first needed.
"""

from __future__ import annotations

import argparse
import json

from matxfer.cli import register_command


def _add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        metavar="FILE.pth.tar",
        help="original CGCNN checkpoint (txie-93/cgcnn pre-trained/)",
    )
    p.add_argument(
        "--atom-init",
        default=None,
        metavar="atom_init.json",
        help="the element table the checkpoint was trained with (default: atom_init.json beside FILE)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="matxfer checkpoint to write (e.g. runs/imported/band-gap.ckpt)",
    )
    p.add_argument("--target", default=None, help="target name (default: from the file name)")
    p.add_argument("--units", default=None, help="target units (default: from the file name)")
    p.add_argument(
        "--trust-file",
        action="store_true",
        help="load FILE with Python's full unpickler (torch.load weights_only=False). RISK: a "
        "crafted .pth.tar runs arbitrary code on this machine while it is read; use only for "
        "a file from a source you trust, when the default safe loader refuses it",
    )
    p.add_argument(
        "--check",
        default=None,
        metavar="DIR",
        help="reference-prediction folder (cifs/ + <model>.csv): print the largest deviation",
    )


def _run_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from matxfer.pretrained.cgcnn_import import compare_with_reference, import_cgcnn

    atom_init = args.atom_init
    if atom_init is None:
        atom_init = Path(args.file).expanduser().parent / "atom_init.json"
        if not atom_init.is_file():
            raise ValueError(f"--atom-init not given and no atom_init.json beside {args.file}")
    out = import_cgcnn(
        args.file, atom_init, args.out, target=args.target, units=args.units, trust=args.trust_file
    )
    summary = {"checkpoint": str(out)}
    if args.check:
        summary["check"] = compare_with_reference(out, args.check, Path(args.file).name)
    print(json.dumps(summary, indent=1))
    return 0


def _add_chgnet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="0.3.0", help="CHGNet version (0.3.0) or a .pth.tar file")
    p.add_argument(
        "--out",
        required=True,
        help="matxfer checkpoint to write (e.g. runs/imported/chgnet-0.3.0.ckpt)",
    )
    p.add_argument(
        "--no-readout-norm",
        action="store_true",
        help="return the last interaction block's features without CHGNet's read-out layer norm",
    )


def _run_chgnet(args: argparse.Namespace) -> int:
    from matxfer.models.backbones.chgnet import export_chgnet_checkpoint

    out = export_chgnet_checkpoint(args.out, args.weights, readout_norm=not args.no_readout_norm)
    print(json.dumps({"checkpoint": str(out)}, indent=1))
    return 0


def _add_sevennet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="7net-0",
        help="SevenNet model of the sevenn wheel (7net-0, 7net-l3i5) or a checkpoint .pth",
    )
    p.add_argument(
        "--out",
        required=True,
        help="matxfer checkpoint to write (e.g. runs/imported/sevennet-0.ckpt)",
    )
    p.add_argument(
        "--parity",
        default="natural",
        choices=["natural", "project", "split"],
        help="how the features treat inversion (see the sevennet backbone's documentation)",
    )


def _run_sevennet(args: argparse.Namespace) -> int:
    from matxfer.models.backbones.sevennet import export_sevennet_checkpoint

    out = export_sevennet_checkpoint(args.out, args.model, parity=args.parity)
    print(json.dumps({"checkpoint": str(out)}, indent=1))
    return 0


register_command(
    "import-sevennet",
    "write the pretrained SevenNet backbone as a matxfer checkpoint (a parent for transfer recipes)",
    _add_sevennet_arguments,
    _run_sevennet,
)

register_command(
    "import-chgnet",
    "write the pretrained CHGNet backbone as a matxfer checkpoint (a parent for transfer recipes)",
    _add_chgnet_arguments,
    _run_chgnet,
)

register_command(
    "import-cgcnn",
    "convert an original CGCNN checkpoint (.pth.tar) into a matxfer checkpoint",
    _add_import_arguments,
    _run_import,
)
