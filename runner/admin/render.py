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
    security = body.get("security", {}).get("tls", {})
    for name, tls in sorted(security.items()):
        days = tls.get("certificate", {}).get("days_left")
        table.add_row(f"tls {name}", f"{days} days left" if days is not None else "on")
    Console().print(table)
