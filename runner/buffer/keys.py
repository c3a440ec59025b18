"""The Redis key schema. Every key of one tenant shares the `{tenant}` hash tag.

| key                               | type   | what                                              |
|-----------------------------------|--------|---------------------------------------------------|
| `<p>:{<tenant>}:stream`           | stream | the tenant's redacted batches, one entry a batch  |
| `<p>:{<tenant>}:seq:<session_id>` | hash   | `w` = highest contiguous seq stored; `<seq>` = 1  |
|                                   |        | for each seq stored above `w` (until filled)      |
| `<p>:{<tenant>}:bytes`            | string | bytes of entries not yet forwarded                |
| `<p>:{<tenant>}:chunks`           | hash   | chunk id → manifest of the entry ids it covers    |
| `<p>:{<tenant>}:ratelimit`        | hash   | the tenant's token bucket, shared by replicas     |
| `<p>:tenants`                     | set    | tenants that have a stream (for the forwarder)    |

`<p>` is `[buffer] stream_prefix` (default `tf`). Stream entry fields:
`sid` session id, `proj` project, `seq`, `pv` policy version, `n` event count,
`t` receive time (ms), `ev` the redacted events as a JSON array (bytes), and,
only when tracing is on, `tp` the W3C traceparent of the batch's span.
A replayed dead letter is one entry `rp` (chunk id), `pv`, `n`, `t`, `body` (NDJSON).
"""

from __future__ import annotations

FORWARD_GROUP = "forwarder"
"""The consumer group the forwarder reads each tenant stream through."""


class Keys:
    """Builds key names for one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def stream(self, tenant: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:stream"

    def seq(self, tenant: str, session_id: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:seq:{session_id}"

    def bytes(self, tenant: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:bytes"

    def tenants(self) -> str:
        return f"{self.prefix}:tenants"
