"""The playground page: one self-contained HTML file (inline script and style, nothing fetched from
elsewhere), served at ``/``. The colour scales are ``charrnn.colours``' own, handed to the script."""

from __future__ import annotations

import json
from importlib import resources

from charrnn import colours


def html(token_required: bool) -> str:
    """The page, with the colour scales and whether the server wants a token filled in."""
    template = resources.files("charrnn.serve").joinpath("playground.html").read_text(encoding="utf-8")
    config = {
        "maps": {kind: [[x, list(rgb)] for x, rgb in anchors] for kind, anchors in colours.MAPS.items()},
        "surprisal_max_bits": colours.SURPRISAL_MAX_BITS,
        "token_required": token_required,
    }
    return template.replace("/*CONFIG*/null", json.dumps(config))
