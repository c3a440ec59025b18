"""A forwarder in its own process, so a test can kill -9 it mid-send.

    python -m tests.forward.forwarder_proc '{"redis_url": ..., "data_dir": ..., "cloud": {...}}'

Prints "ready" once started, then runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from runner.buffer.keys import Keys
from runner.forward.forwarder import Forwarder
from runner.forward.settings import CloudSettings, ForwardSettings
from runner.policy.store import PolicyStore
from runner.telemetry.logging import configure
from tests.support import make_config


async def main(spec: dict[str, Any]) -> None:
    configure("json", "warning")  # logs to stderr; stdout carries only "ready"
    config = make_config(Path(spec["data_dir"]), spec["redis_url"])
    redis = Redis.from_url(spec["redis_url"])
    forwarder = Forwarder(
        redis=redis,
        config=config,
        policies=PolicyStore(),
        keys=Keys("tf"),
        cloud=CloudSettings.model_validate(spec["cloud"]),
        settings=ForwardSettings.model_validate(spec["forward"]),
        environ={},
    )
    await forwarder.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until kill -9


if __name__ == "__main__":
    asyncio.run(main(orjson.loads(sys.argv[1])))
