"""Progress bars for long-running commands (tqdm on stderr; quiet when not a terminal and
``MATXFER_PROGRESS=0``)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(desc: str, total: int | None = None, disable: bool | None = None, **kw):
    """A tqdm bar; set ``MATXFER_PROGRESS=0`` to silence every bar."""
    if disable is None:
        disable = os.environ.get("MATXFER_PROGRESS", "1") == "0"
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kw)
