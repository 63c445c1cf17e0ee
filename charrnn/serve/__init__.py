"""``charrnn serve``: many people sampling one or more models at once over HTTP, and a playground page.

- ``app``        the Starlette app: routes, the token rule, errors as JSON, the event stream
- ``scheduler``  continuous batching: one fused step per character for every stream on a model
- ``validate``   the JSON bodies, checked field by field
- ``stops``      stop strings in a stream of characters
- ``limits``     the caps, the address rule and the token
- ``page``       the playground page (``playground.html``)
"""

from __future__ import annotations

from charrnn.serve.app import create_app
from charrnn.serve.limits import Limits

__all__ = ["Limits", "create_app"]
