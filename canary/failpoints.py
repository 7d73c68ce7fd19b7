"""Named points where a test can make canary die, to prove that every line can be a last one.

`CANARY_FAILPOINT=NAME[:N]` SIGKILLs the process the N-th time (default the first) it passes the point
NAME. Unset, a point costs one dictionary lookup. The points sit where a crash is hardest to survive:

- `before-write`: the decision is on disk, the route not yet written;
- `after-write`: the route holds the new weights and state, the outcome is not yet recorded;
- `after-outcome`: both are done, before anything else happens.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "CANARY_FAILPOINT"
_passed: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    wanted, _, count = spec.partition(":")
    if wanted != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] >= (int(count) if count.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
