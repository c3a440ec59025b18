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
    for tenant, size in sorted(buffer.get("bytes_by_tenant", {}).items()):
        table.add_row(f"  {tenant}", str(size))
    Console().print(table)
