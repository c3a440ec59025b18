"""`runner status` for people: one screen, drawn with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_status(body: dict[str, Any]) -> None:
    """Print the admin status as a table."""
    table = Table(title=f"TRACEFLOW Runner {body.get('runner_id', '')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    ready = "[green]ready[/green]" if body.get("ready") else "[red]NOT READY[/red]"
    table.add_row("state", ready + ("" if body.get("ready") else f" {body.get('not_ready')}"))
    table.add_row("version", str(body.get("version")))
    table.add_row("uptime", f"{body.get('uptime_s', 0)} s")
    policy = body.get("policy", {})
    table.add_row("policy", f"v{policy.get('version')} from {policy.get('source')}")
    table.add_row("mode", "air-gapped" if body.get("air_gapped") else "forwarding to cloud")
    sessions = body.get("sessions", {})
    table.add_row("sessions", ", ".join(f"{k}: {v}" for k, v in sessions.items()) or "0")
    for key, value in body.get("ingest", {}).items():
        table.add_row(key.replace("_", " "), str(value))
    buffer = body.get("buffer", {})
    table.add_row(
        "buffer bytes", f"{buffer.get('bytes_total', 0)} / {buffer.get('high_water_bytes')}"
    )
    depth = buffer.get("depth_by_tenant", {})
    for tenant, size in sorted(buffer.get("bytes_by_tenant", {}).items()):
        d = depth.get(tenant, {})
        age = d.get("oldest_age_s")
        oldest = f", oldest {age:.0f} s" if isinstance(age, int | float) else ""
        table.add_row(f"  {tenant}", f"{size} B, {d.get('entries', 0)} entries{oldest}")
    rate = body.get("ingest_rate", {}).get("events_per_s", 0)
    table.add_row("ingest rate", f"{rate} events/s")
    forward = body.get("forward", {})
    if forward:
        circuit = forward.get("circuit", {}).get("state", "")
        dlq = forward.get("dlq", {})
        table.add_row("forwarder", f"{forward.get('mode')} circuit {circuit}")
        for tenant, t in sorted(forward.get("tenants", {}).items()):
            table.add_row(f"  {tenant}", str(t.get("status", "")))
        table.add_row("dead letters", f"{dlq.get('count')} in {dlq.get('store')}")
        if forward.get("last_error"):
            table.add_row("last error", str(forward["last_error"]))
    drain = body.get("drain") or {}
    if drain.get("state"):
        spilled = drain.get("spilled") or {}
        table.add_row(
            "drain",
            f"{drain['state']}, {drain.get('remaining_entries', 0)} entries left"
            + (f", {spilled.get('chunks', 0)} chunks spilled" if spilled else ""),
        )
    security = body.get("security", {}).get("tls", {})
    for name, tls in sorted(security.items()):
        days = tls.get("certificate", {}).get("days_left")
        table.add_row(f"tls {name}", f"{days} days left" if days is not None else "on")
    Console().print(table)


def render_drain_progress(progress: dict[str, Any]) -> str:
    """One line of `runner drain` progress from a `{"progress": …}` line of the drain stream."""
    state = progress.get("state", "")
    line = f"  [{progress.get('elapsed_s', 0):>5} s] {state or 'starting'}:"
    line += f" sessions open {progress.get('sessions_open', 0)}"
    if "backlog_now" in progress:
        line += f", entries not yet forwarded {progress['backlog_now']}"
    spilled = progress.get("spilled")
    if state == "spilling" and spilled:
        line += f", spilled {spilled['chunks']} chunks ({spilled['events']} events)"
    return line


def render_drain_result(result: dict[str, Any]) -> str:
    """What a finished drain did: forwarded, spilled, left in Redis."""
    forwarded = result.get("forwarded") or {}
    lines = [f"drain {result.get('state', '?')} after {result.get('elapsed_s', 0)} s"]
    if result.get("error"):
        lines.append(f"  error: {result['error']}")
    lines.append(
        f"  forwarded: {forwarded.get('chunks', 0)} chunks, {forwarded.get('events', 0)} events"
        + (
            f" ({forwarded['dead_lettered']} chunks dead-lettered on the cloud's answer)"
            if forwarded.get("dead_lettered")
            else ""
        )
    )
    spilled = result.get("spilled")
    if spilled:
        lines.append(
            f"  spilled to the dead-letter store ({spilled.get('store')}): {spilled['chunks']} "
            f"chunks, {spilled['entries']} entries, {spilled['events']} events, "
            f"{spilled['bytes']} bytes"
        )
        if spilled.get("manifest"):
            lines.append(
                f"  manifest: {spilled['manifest']} "
                f"(replay later: runner dlq replay --manifest {spilled['spill_id']})"
            )
        for tenant, why in sorted((spilled.get("skipped") or {}).items()):
            lines.append(f"  not spilled ({tenant}): {why}")
        if spilled.get("out_of_time"):
            lines.append("  the spill deadline passed before everything was spilled")
        if spilled.get("error"):
            lines.append(f"  spill error: {spilled['error']}")
    elif result.get("spill_skipped"):
        lines.append(f"  nothing spilled: {result['spill_skipped']}")
    left = result.get("remaining_entries", 0)
    lines.append(
        f"  left in Redis: {left} entries" + (" (forwarded after the next start)" if left else "")
    )
    return "\n".join(lines)
