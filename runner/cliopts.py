"""What every `runner` sub-command shares: the `--config` option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Path to runner.toml (default ./runner.toml, or $RUNNER_CONFIG).",
        show_default=False,
    ),
]
