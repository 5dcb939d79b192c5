"""mailgate's filter: the public seam the doors and tools build on.

Raw bytes + an `Envelope` go in (`Engine.scan`, or `ScanPool.scan` in worker processes), a
`Verdict` comes out, and `plan_for` / `refusal_for` turn it into what a door does; held mail
goes behind `QuarantineStore`. The layers underneath, each allowed to import only those before
it: `message` (parsing) < `detect` < `policy` < `scan` | `store` < `ops` < the doors
(`milter`, `mailgate.relay`) < `cli`. A door imports this seam, `store` and `ops`, nothing else
of the filter; `tests/test_layering.py` checks it.
"""

from mailgate.filter.detect.masking import mask_field
from mailgate.filter.policy import replies
from mailgate.filter.policy.actions import encode_header_value, plan_for, refusal_for
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackError
from mailgate.filter.policy.replies import reply_text
from mailgate.filter.policy.verdict import Action, Hit, Verdict
from mailgate.filter.policy.yamlsource import YamlError, load_yaml
from mailgate.filter.scan.engine import Engine
from mailgate.filter.scan.pool import ScanPool
from mailgate.filter.scan.reload import PackReloader
from mailgate.filter.store.quarantine import QuarantineStore

__all__ = [
    "Action",
    "Engine",
    "Envelope",
    "Hit",
    "PackError",
    "PackReloader",
    "QuarantineStore",
    "ScanPool",
    "Verdict",
    "YamlError",
    "encode_header_value",
    "load_yaml",
    "mask_field",
    "plan_for",
    "refusal_for",
    "replies",
    "reply_text",
]
