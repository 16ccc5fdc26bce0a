"""`quakemon bench`: capacity and throughput on this machine (`quakemon.tools.bench`)."""

from __future__ import annotations

import argparse

from quakemon.cli.common import Subparsers, add_command


def add_bench(sub: Subparsers) -> None:
    p = add_command(sub, "bench", cmd_bench, "capacity and throughput on this machine")
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    p.add_argument("--json", help="write the figures as JSON to this file")
    p.add_argument("--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N"')
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None)
    p.add_argument("--stride-s", type=float, default=None, help="window stride in seconds (default 1)")
    p.add_argument("--parts", default=None, help="comma-separated subset of roof,replay,live (default all)")
    p.add_argument("--roof-batches", default=None, help="comma-separated batch sizes for the roof")
    p.add_argument("--replay-stations", type=int, default=None, help="stations in the replay archive (default 40)")
    p.add_argument("--replay-batch", type=int, default=None,
                   help="replay inference batch (default 256, as `quakemon replay` runs)")
    p.add_argument("--replay-threads", type=int, default=None,
                   help="torch threads of the replay (default: torch's, as `quakemon replay` runs)")
    p.add_argument("--replay-repeats", type=int, default=None,
                   help="replay runs, each between two roofs; the ratio is their median (default 5)")
    p.add_argument("--live-batch", type=int, default=None, help="the live daemon's model.batch_size (default 64)")
    p.add_argument("--live-screen-every", type=int, default=None,
                   help="the live daemon's model.screen_every (default 1: every window, every station busy)")
    p.add_argument("--live-screen-net", default=None, metavar="PATH",
                   help="the cascade as operators run it: this screen net with the bundled detector (no spread head) "
                        "and the default trigger settings")
    p.add_argument("--live-data", choices=("synthetic", "uv10", "uv10-z"), default=None,
                   help="the live stations' data: synthetic (default), uv10 (real noise of the msnoise UV10 day, three "
                        "components from different hours), uv10-z (the same, HHZ only)")
    p.add_argument("--live-event-every", type=float, default=None, metavar="S",
                   help="one synthetic local event per station every S seconds (default 60; 0: none, real noise only)")
    p.add_argument("--live-archive-s", type=float, default=None, metavar="S",
                   help="seconds of data per station, served in a loop (default 120)")
    p.add_argument("--live-measure-s", type=float, default=None, metavar="S",
                   help="seconds each live step is measured after its warm-up (default 30)")
    p.add_argument("--live-warmup-s", type=float, default=None, metavar="S",
                   help="seconds after the first windows before a live step's interval starts (default 3)")
    p.add_argument("--live-stations", default=None,
                   help="comma-separated station counts the live part tries in turn (default 100,200,...,1000)")


def cmd_bench(args: argparse.Namespace) -> int:
    from quakemon.tools.bench import bench_main

    return bench_main(args)
