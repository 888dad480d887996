"""``regenerate-room-set``: sample a new room set from a new seed and build a new dataset version.

Scheduled by cron in prefect.yaml. The version directory is derived from the room-set hash, so
a regeneration lands beside the earlier versions and never overwrites them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.build import build_spatial_dataset
from schemas.build import BuildConfig, BuildResult, RunOptions


def seed_for(when: datetime) -> int:
    """A new room-set seed per scheduled day: reruns of the same day's run rebuild the same set."""
    return int(when.astimezone(UTC).strftime("%Y%m%d"))


@flow(name="regenerate-room-set", log_prints=True)
def regenerate_room_set(
    config: BuildConfig = BuildConfig(),  # noqa: B008
    run: RunOptions = RunOptions(),  # noqa: B008
    output: str = "out",
    room_seed: int | None = None,
) -> BuildResult:
    """Build ``config`` again on a fresh room set: only its room seed changes (by default the
    run's scheduled date; ``room_seed`` pins one)."""
    when = flow_run.get_scheduled_start_time() or datetime.now(UTC)
    seed = room_seed if room_seed is not None else seed_for(when)
    get_run_logger().info("regenerating with room-set seed %d", seed)
    return build_spatial_dataset(config=config.model_copy(update={"room_seed": seed}), run=run, output=output)
