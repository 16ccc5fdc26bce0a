"""Share of windows a cascade screen forwards to the detector on the live bench's station data, in replay.

    .venv/bin/python benchmarks/screen_pass.py SCREEN [SCREEN ...] [--data uv10|uv10-z|synthetic]
        [--stations 4] [--seconds 600] [--json out.json]

Writes the archive `quakemon bench --parts live --live-data ...` serves (`quakemon.tools.bench_common`:
`write_noise_archive` for the msnoise UV10 day, three components or the vertical only; `write_synthetic_archive`
for the bench's synthetic noise with one event a minute), replays it (`quakemon.pipeline.runner.replay`) with the
bundled detector and each screen (`screen_net=`, the pipeline's cascade rule, default trigger), and prints the runner's
`forwarded` / `screened_out` counts and the largest earthquake probability the detector gave a forwarded window.
This is what decides whether a screen can stand for a quiet station in the live bench. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from quakemon.tools.bench_live import LIVE_DATA, live_archive


def archive(directory: Path, data: str, stations: int, seconds: float) -> list[Path]:
    """The live bench's stations (`bench_live.live_archive`): real noise without events, or the synthetic data
    with its one event a minute."""
    from quakemon.tools.bench_common import BenchPlan

    plan = BenchPlan(live_data=data, live_archive_s=seconds, live_event_every_s=60.0 if data == "synthetic" else None)
    return live_archive(directory, plan, stations)


def forwarded_share(files: list[Path], screen: str) -> dict[str, Any]:
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.runner import replay

    checkpoint = load_checkpoint(resolve_checkpoint(None))
    result = replay([str(p) for p in files], checkpoint, device="cpu", keep_series=True, progress=False,
                    screen_net=screen, screen_every=1)
    stats = result.stats
    label = result.labels.index("earthquake")
    p_max = max((float(max(row[label] for row in s.probabilities)) for s in result.series.values()
                 if len(s.probabilities)), default=0.0)
    return {"screen": Path(screen).name, "windows": stats["windows"], "forwarded": stats["forwarded"],
            "screened_out": stats["screened_out"], "forwarded_share": stats["forwarded"] / max(stats["windows"], 1),
            "detections": len(result.detections), "max_p_seen_by_trigger": p_max}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("screens", nargs="+", help="screen net checkpoints of the bundled detector")
    parser.add_argument("--data", choices=LIVE_DATA, default="uv10")
    parser.add_argument("--stations", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = archive(Path(tmp), args.data, args.stations, args.seconds)
        rows = [forwarded_share(files, s) for s in args.screens]
    for r in rows:
        print(f"{r['screen']}: {r['forwarded']} of {r['windows']} windows forwarded "
              f"({100 * r['forwarded_share']:.2f} %), {r['detections']} detections, "
              f"max p the trigger saw {r['max_p_seen_by_trigger']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "stations": args.stations, "seconds": args.seconds,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
