"""Field names used across matxfer, each with its shape.

A crystal graph is a :class:`torch_geometric.data.Data` with these fields. Edges point
from the neighbour ``j`` (``edge_index[0]``, source) to the centre ``i`` (``edge_index[1]``,
target), so messages flow ``j -> i`` and the edge vector is

    r_ij = pos[j] + cell_shift_ij @ cell - pos[i]

computed from ``pos`` and ``cell`` inside the model (so that rotating the structure rotates
the edges, and autograd can reach positions and the cell).
"""

from __future__ import annotations

from typing import Final

# --- per graph -------------------------------------------------------------------------
CELL: Final[str] = "cell"  # [1, 3, 3] float, lattice vectors as rows (Angstrom)
MATERIAL_ID: Final[str] = "material_id"  # str
NUM_NODES: Final[str] = "num_nodes"  # int

# --- per atom --------------------------------------------------------------------------
ATOMIC_NUMBERS: Final[str] = "z"  # [n_atoms] long
POSITIONS: Final[str] = "pos"  # [n_atoms, 3] float, Cartesian (Angstrom)
ATOM_FEATURES: Final[str] = "x"  # [n_atoms, n_feat] float, optional tabulated features
BATCH: Final[str] = "batch"  # [n_atoms] long, graph index of each atom

# --- per edge --------------------------------------------------------------------------
EDGE_INDEX: Final[str] = "edge_index"  # [2, n_edges] long, (source j, target i)
CELL_SHIFT: Final[str] = "cell_shift"  # [n_edges, 3] float, integer image of j
EDGE_VECTORS: Final[str] = "edge_vec"  # [n_edges, 3] float, r_ij (computed, not stored)
EDGE_LENGTHS: Final[str] = "edge_len"  # [n_edges] float (computed, not stored)

# --- line graph (ALIGNN) ---------------------------------------------------------------
LINE_INDEX: Final[str] = "line_index"  # [2, n_triplets] long, pairs of edges sharing an atom

# --- backbone outputs ------------------------------------------------------------------
NODE_FEATURES: Final[str] = "node_feats"  # [n_atoms, width] or [n_atoms, irreps.dim]
EDGE_FEATURES: Final[str] = "edge_feats"  # [n_edges, width], optional

# --- target names (dataset label keys) -------------------------------------------------
ELASTIC_TENSOR: Final[str] = "elastic_tensor"  # [3, 3, 3, 3] GPa
DIELECTRIC_TOTAL: Final[str] = "dielectric_total"  # [3, 3]
DIELECTRIC_ELECTRONIC: Final[str] = "dielectric_electronic"  # [3, 3]
DIELECTRIC_IONIC: Final[str] = "dielectric_ionic"  # [3, 3]
PIEZO_TENSOR: Final[str] = "piezo_tensor"  # [3, 3, 3] C/m^2
BORN_CHARGES: Final[str] = "born_charges"  # per atom [n_atoms, 3, 3] e
BULK_MODULUS_VRH: Final[str] = "bulk_modulus_vrh"  # GPa
SHEAR_MODULUS_VRH: Final[str] = "shear_modulus_vrh"  # GPa
FORMATION_ENERGY_PER_ATOM: Final[str] = "formation_energy_per_atom"  # eV/atom
BAND_GAP: Final[str] = "band_gap"  # eV
EIJ_MAX: Final[str] = "eij_max"  # C/m^2
REFRACTIVE_INDEX: Final[str] = "refractive_index"  # dimensionless
ENERGY: Final[str] = "energy"  # eV per cell
ENERGY_PER_ATOM: Final[str] = "energy_per_atom"  # eV/atom
FORCES: Final[str] = "forces"  # per atom [n_atoms, 3] eV/Angstrom


def label_key(task: str) -> str:
    """Graph field holding the label of ``task``."""
    return f"y_{task}"


def mask_key(task: str) -> str:
    """Graph field saying whether the graph carries the label of ``task``."""
    return f"m_{task}"
