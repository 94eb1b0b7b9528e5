"""What a media source may look like: the forms the spec's samples use, and the refusal for others.

Shared by the request validator (which checks the form) and the fetcher (which reads it).
"""

from __future__ import annotations

import re

INVALID_URL = (
    "<400> InternalError.Algo.InvalidParameter: The provided URL does not appear to be valid. "
    "Ensure it is correctly formatted."
)
# ``data:image/png;base64,`` and ``data:;base64,`` (parameters allowed before ``;base64``).
DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[^;,]*)*);base64,", re.I)
BARE_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")
