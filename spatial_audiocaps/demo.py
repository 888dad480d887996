"""``make demo``: the whole build flow on the embedded defaults.

Ephemeral Prefect, local output, the built-in demo corpus, the template rephraser, the paper's
room distribution. Ends by printing where the dataset card is. ``--scenes YAML`` (``make
demo-scenes``: room_specs/scenes_demo.yaml) builds multi-source, moving-source scenes instead;
``--formats foa,binaural,mic --order 3`` (``make demo-binaural``) renders the scenes at order 3 and
writes each spatial sample as FOA (``.flac``), binaural (MIT KEMAR) and DCASE's tetrahedral mic; the
card then plots the rendered set's ILD/ITD against azimuth.
"""

from __future__ import annotations

import argparse
import json
import os

# Before Prefect is imported: no analytics (a fresh SQLite database logs "database is locked"
# otherwise) and room for a slow first start of the ephemeral server on a busy machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scenes", default=None, metavar="YAML", help="a scene distribution")
    parser.add_argument("--formats", default="ambix", help="output formats, e.g. foa,binaural,mic")
    parser.add_argument("--order", type=int, default=1, help="RIR ambisonic order (3 for binaural/mic)")
    args = parser.parse_args()

    from flows.build import build_spatial_dataset
    from schemas.build import BuildConfig, RunOptions
    from schemas.rooms import RirSettings
    from tasks.build_file import read_scene_file

    scenes = read_scene_file(args.scenes) if args.scenes else None
    config = BuildConfig(source="demo", limit=args.clips, shard_size=32, scenes=scenes,
                         formats=args.formats, rir=RirSettings(order=args.order))
    result = build_spatial_dataset(config=config, run=RunOptions(n_workers=args.workers, progress=True),
                                   output=args.out)
    print(json.dumps(result.model_dump(mode="json"), indent=2))
    print(f"\nDataset card: {result.card}")


if __name__ == "__main__":
    main()
