"""``regenerate-room-set``: sample a new room set from a new seed and build a new dataset version.

Scheduled by cron in prefect.yaml. The version directory is derived from the room-set hash, so
a regeneration lands beside the earlier versions and never overwrites them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.build import BuildResult, build_spatial_dataset
from room_specs import DEFAULT_CONFIG
from schemas.sources import SourceName


def seed_for(when: datetime) -> int:
    """A new room-set seed per scheduled day: reruns of the same day's run rebuild the same set."""
    return int(when.astimezone(UTC).strftime("%Y%m%d"))


@flow(name="regenerate-room-set", log_prints=True)
def regenerate_room_set(
    source: SourceName = "demo",
    input: str | None = None,
    output: str = "out",
    room_config: str = str(DEFAULT_CONFIG),
    room_seed: int | None = None,
    n_rooms: int | None = None,
    rephraser: str = "template",
    rephraser_model: str | None = None,
    rephrase_deployment: str | None = None,
    rephrase_workers: int = 1,
    shard_size: int = 256,
    limit: int | None = None,
    n_workers: int = 2,
) -> BuildResult:
    """Build ``source`` again on a fresh room set (seed from the run's scheduled date by default)."""
    when = flow_run.get_scheduled_start_time() or datetime.now(UTC)
    seed = room_seed if room_seed is not None else seed_for(when)
    get_run_logger().info("regenerating with room-set seed %d", seed)
    return build_spatial_dataset(
        source=source, input=input, output=output, room_config=room_config, room_seed=seed,
        n_rooms=n_rooms, rephraser=rephraser, rephraser_model=rephraser_model,
        rephrase_deployment=rephrase_deployment, rephrase_workers=rephrase_workers, shard_size=shard_size,
        limit=limit, n_workers=n_workers,
    )
