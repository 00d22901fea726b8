"""The datasets matxfer knows, one module per source.

Each module defines its parser(s) and registers its :class:`~matxfer.data.registry.DatasetSpec`
(files, targets and units, tensor frame, label checks, citation, original source) with
:func:`~matxfer.data.registry.register` when imported. :mod:`matxfer.data.registry` imports
this package on the first look-up of a dataset, so a new dataset is one module here plus one
line below.
"""

from __future__ import annotations

from matxfer.data.sources import (
    castelli,  # noqa: F401
    dejong,  # noqa: F401
    emt,  # noqa: F401
    flla,  # noqa: F401
    macefield,  # noqa: F401
    matbench_phonons,  # noqa: F401
    materials_project,  # noqa: F401
    petousis,  # noqa: F401
    petretto,  # noqa: F401
)
