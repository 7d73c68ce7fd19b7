"""Links a reader follows from `status` and the report (pure): v2's traces in Jaeger over the rollout's
time, and the namespace's versioned service graph in Kiali, when the policy's `spec.links` names them."""

from __future__ import annotations

import json
import urllib.parse

from canary.policy import Policy


def reader_links(policy: Policy, start: float, end: float) -> list[tuple[str, str]]:
    """(label, URL) for each configured tool. Istio's sidecars name a workload's spans `app.namespace` and tag
    them with the version (`istio.canonical_revision`); Jaeger takes its times in microseconds."""
    t, links = policy.target, policy.links
    app = t.host.split(".")[0]
    out = []
    if links.jaeger:
        query = {
            "service": f"{app}.{t.namespace}",
            "tags": json.dumps({"istio.canonical_revision": t.canary}, separators=(",", ":")),
            "start": str(int(start * 1e6)),
            "end": str(int(end * 1e6)),
            "limit": "20",
        }
        out.append((f"traces of {t.canary} in Jaeger", f"{links.jaeger}/search?{urllib.parse.urlencode(query)}"))
    if links.kiali:
        query = {"namespaces": t.namespace, "graphType": "versionedApp", "duration": str(max(int(end - start), 60))}
        out.append(
            ("the service graph in Kiali", f"{links.kiali}/console/graph/namespaces/?{urllib.parse.urlencode(query)}")
        )
    return out
