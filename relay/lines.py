"""Line ends of a message in one vectorised pass.

Both ends of the relay's DATA path need to know whether a message has CRLF line ends
throughout (the form SMTP carries and the engine reads), and the receiving end how long its
longest line is. bytes.count and splitlines walk the message a byte at a time, several times
over: about 0.6 ms for a 100 KB message, against 0.04 ms here with numpy (a dependency already,
for EDM indexes).
"""

from __future__ import annotations

import numpy as np

_CR, _LF = 13, 10


def longest_crlf_line(data: bytes) -> int | None:
    """The length of the longest line (its line end not counted) when every CR and LF in
    `data` belongs to a CRLF pair; None when there is a bare CR or LF. Text after the last
    CRLF counts as a line."""
    if not data:
        return 0
    octets = np.frombuffer(data, np.uint8)
    cr = octets == _CR
    lf = octets == _LF
    # Each CR is followed by an LF and each LF follows a CR: cr shifted by one equals lf.
    if lf[0] or cr[-1] or not np.array_equal(cr[:-1], lf[1:]):
        return None
    ends = np.flatnonzero(lf)
    if not ends.size:
        return len(data)
    first = int(ends[0]) - 1  # up to its CR
    between = int((ends[1:] - ends[:-1]).max()) - 2 if ends.size > 1 else 0  # LF to LF, less CRLF
    return max(first, between, len(data) - 1 - int(ends[-1]))
