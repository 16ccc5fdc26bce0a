"""The `quakemon` command: parse, load config, call one function.

Exit codes (DESIGN.md): 0 ok; 2 usage or config error (argparse errors, `ConfigError`, whose message names the
key); 1 runtime failure (any other `QuakemonError`, or an OS error such as a port in use or an unwritable
file), reported as one `quakemon: error: ...` line, never a traceback. 130 after Ctrl-C.

`listen` and `associate` are pass-throughs: everything after the subcommand name goes unchanged to that
module's own `main(argv)`, so their flags and `--help` are defined in one place.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quakemon import __version__
from quakemon.base.errors import ConfigError, QuakemonError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# subcommand -> module whose main(argv) -> int receives the rest of the command line
PASSTHROUGH = {"listen": "quakemon.tools.listen", "associate": "quakemon.service.associate_main"}


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None, *, require_streams: bool = False):
    """Load the config (file, then `--set` and flag overrides), configure logging; return (config, overrides)."""
    from quakemon.base.logs import configure_logging
    from quakemon.service.config import load_config

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        overrides[key.strip()] = value.strip()
    cfg = load_config(getattr(args, "config", None), overrides, require_streams=require_streams)
    configure_logging(args.log_level or cfg.logging.level, cfg.logging.format)
    return cfg, overrides


def _require_checkpoint(cfg: Any, flag: str | None) -> None:
    """Fail before any work starts when an explicit checkpoint file does not exist (the bundled one is checked
    where it is resolved)."""
    path = cfg.model.checkpoint
    if path and not Path(path).expanduser().is_file():
        key = "--model" if flag else "model.checkpoint"
        raise ConfigError(f"{key}: expected an existing checkpoint file (.safetensors), got {path!r}, which "
                          f"{'is not a file' if Path(path).expanduser().exists() else 'does not exist'}")


def _cmd_run(args: argparse.Namespace) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    cfg, overrides = _config(args, {"model.checkpoint": args.model},
                             require_streams=stages is None or "ingest" in stages)
    from quakemon.service.daemon import run_daemon
    from quakemon.service.stages import STAGES

    unknown = [s for s in stages or [] if s not in STAGES]
    if unknown or stages == []:
        raise ConfigError(f"--stages: expected a comma-separated subset of {','.join(STAGES)}, got {args.stages!r}")
    _require_checkpoint(cfg, args.model)
    return run_daemon(cfg, args.config, overrides, stages)


def _cmd_replay(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise ConfigError(f"replay: expected MiniSEED files or directories, got {', '.join(map(repr, missing))}, "
                          "which do not exist")
    cfg, _ = _config(args, {"model.checkpoint": args.model})
    _require_checkpoint(cfg, args.model)
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.runner import replay

    ckpt = load_checkpoint(resolve_checkpoint(cfg.model.checkpoint))
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    t = cfg.trigger
    try:
        from quakemon.pipeline.associate import associator_from_config

        result = replay(args.paths, ckpt, output=out, stride_s=cfg.window.stride_s,
                        associator=associator_from_config(cfg.associate),
                        selectors=args.select or None,
                        trigger={"on": t.on, "off": t.off, "min_duration_s": t.min_duration, "trigger_label": t.label,
                                 "max_missing": cfg.window.max_missing_fraction},
                        device=cfg.model.device, precision=cfg.model.precision, graph=cfg.model.graph,
                        batch_size=max(cfg.model.batch_size, 256), progress=not args.quiet,
                        keep_series=bool(args.plot))
    finally:
        if out is not sys.stdout:
            out.close()
    if args.plot:
        from quakemon.tools.plot import plot_replay

        plot_replay(args.paths, result, args.plot, selectors=args.select or None)
    new = sum(1 for d in result.detections if d["state"] == "new")
    print(f"replay: {result.windows} windows, {new} detections", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.tools.serve import serve

    configure_logging(args.log_level or "info", "auto")
    return serve(args.paths, host=args.host, port=args.port, speed=args.speed, loop=args.loop,
                 retime=args.retime_now, first_seq=args.first_seq, port_file=args.port_file) or 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from quakemon.service.config import check_config_main

    return check_config_main(args.file)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.wire.security import keygen

    configure_logging(args.log_level or "warning", "auto")
    public, secret = keygen(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from quakemon.cli.train import train_main

    _config(args)
    return train_main(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from quakemon.cli.train import evaluate_main

    _config(args)
    return evaluate_main(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from quakemon.tools.demo import run_demo

    return run_demo(duration_s=args.duration, plot=args.plot or None, speed=args.speed)


def _cmd_bench(args: argparse.Namespace) -> int:
    from quakemon.tools.bench import bench_main

    return bench_main(args)


def _cmd_params(args: argparse.Namespace) -> int:
    from quakemon.models.params import main

    main()
    return 0


def _passthrough(command: str, argv: list[str], log_level: str | None) -> int:
    """Run a pass-through subcommand: its module's main(argv) parses everything after the subcommand name."""
    from quakemon.base.logs import configure_logging

    module_name = PASSTHROUGH[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise QuakemonError(f"`quakemon {command}` is not available in this installation "
                            f"(module {module_name} is missing)") from None
    configure_logging(log_level or "info", "auto")  # logs go to stderr; stdout stays the command's output
    return int(module.main(argv) or 0)


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0..65535, got {text!r}")
    return value


def _hex_seq(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a hexadecimal SeedLink sequence number, got {text!r}") from None
    if not 0 <= value <= 0xFFFFFF:
        raise argparse.ArgumentTypeError(f"expected a sequence number 0..FFFFFF (hex), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quakemon", description="Streaming seismic event detector.",
                                     epilog="exit codes: 0 ok, 2 usage or config error, 1 runtime failure")
    parser.add_argument("--version", action="version", version=f"quakemon {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="override logging.level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, func: Callable[[argparse.Namespace], int] | None, help: str,
            **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(func=func)
        return p

    def config_flags(p: argparse.ArgumentParser, required: bool = False) -> None:
        p.add_argument("--config", required=required, help="TOML config file (see config/quakemon.toml)")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")

    p = cmd("run", _cmd_run, "the daemon: SeedLink -> detections on PUB")
    config_flags(p, required=True)
    p.add_argument("--model", help="checkpoint (overrides model.checkpoint)")
    p.add_argument("--stages", help="comma-separated subset of ingest,preprocess,inference (multi-host)")

    p = cmd("replay", _cmd_replay, "archived MiniSEED -> detections (JSON Lines), same code path")
    p.add_argument("paths", nargs="+", help="MiniSEED files, directories or SDS roots")
    config_flags(p)
    p.add_argument("--model", help="checkpoint (default: model.checkpoint, else the bundled model)")
    p.add_argument("--output", "-o", default="-", help="JSON Lines file, or - for stdout")
    p.add_argument("--plot", help="write a PNG of waveforms, probabilities and detections")
    p.add_argument("--select", action="append", metavar="NET.STA.LOC.CHA", help="stream selector (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = cmd("serve", _cmd_serve, "SeedLink v3 server streaming archived MiniSEED (tests, demos)")
    p.add_argument("paths", nargs="+", help="MiniSEED files or directories")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=18000, help="TCP port (0 = any free port; see --port-file)")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--speed", type=_non_negative, default=1.0, help="x real time; 0 = as fast as the client reads")
    p.add_argument("--loop", action="store_true", help="repeat the archive, each pass shifted by its span")
    p.add_argument("--retime-now", action="store_true", help="shift record times so the archive starts now")
    p.add_argument("--first-seq", type=_hex_seq, default=0, metavar="HEX", help="sequence number of record 0 (hex)")

    for name, help in (("listen", "subscribe and print detections; reports seq gaps and silence"),
                       ("associate", "group detections from one or more publishers into events (event.<id>)")):
        p = cmd(name, None, help, add_help=False)
        p.add_argument("argv", nargs=argparse.REMAINDER, help=f"arguments of `quakemon {name}`; see its -h")

    p = cmd("check-config", _cmd_check_config, "validate a config file and print the resolved values")
    p.add_argument("file")

    p = cmd("keygen", _cmd_keygen, "write a CURVE key pair: NAME.key and NAME.key_secret (mode 0600)")
    p.add_argument("directory", help="created if missing (mode 0700)")
    p.add_argument("--name", default="quakemon")

    p = cmd("train", _cmd_train, "train HybridViT on labelled waveforms")
    p.add_argument("--data", action="append", required=True,
                   help="synthetic:N, a SeisBench folder, or a CSV (file,label or network,station,p_time)")
    p.add_argument("--output", "-o", required=True, help="checkpoint to write (.safetensors)")
    for flag, typ, default in (("--backbone", str, "TINY"), ("--depth", int, 4), ("--epochs", int, 10),
                               ("--batch-size", int, 64), ("--lr", float, 3e-4), ("--freeze-epochs", int, 0),
                               ("--seed", int, 0), ("--component-dropout", float, 0.0),
                               ("--pretrained", str, ""), ("--device", str, "auto"), ("--val-fraction", float, 0.15)):
        p.add_argument(flag, type=typ, default=default)
    p.add_argument("--quiet", action="store_true")

    p = cmd("evaluate", _cmd_evaluate, "score a checkpoint on labelled windows or continuous data")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--data", action="append", help="labelled windows, as for train")
    p.add_argument("--continuous", nargs="*", help="MiniSEED files for event matching")
    p.add_argument("--events", help="CSV network,station,p_time for --continuous")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    p = cmd("demo", _cmd_demo, "serve + run + listen on bundled real recordings and the bundled model")
    p.add_argument("--duration", type=_non_negative, default=None, help="stop after this many seconds")
    p.add_argument("--plot", default="quakemon-demo.png", help='PNG written at the end ("" = none)')
    p.add_argument("--speed", type=_non_negative, default=2.0, help="how much faster than real time to stream")

    p = cmd("bench", _cmd_bench, "capacity and throughput on this machine")
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
                   help="replay runs, each between two roofs; the ratio is their median (default 3)")
    p.add_argument("--live-batch", type=int, default=None, help="the live daemon's model.batch_size (default 64)")
    p.add_argument("--live-stations", default=None,
                   help="comma-separated station counts the live part tries in turn (default 100,200,...,1000)")

    cmd("params", _cmd_params, "print the exact parameter count of every backbone")
    return parser


def _split_passthrough(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, list[str], str | None] | None:
    """(command, its argv, --log-level) when argv names a pass-through subcommand, else None."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    if i >= len(argv) or argv[i] not in PASSTHROUGH:
        return None
    head = parser.parse_args(argv[:i + 1])  # validates the global options (exits 2 on a bad one)
    return argv[i], argv[i + 1:], head.log_level


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `quakemon`; returns the exit code (argparse usage errors exit 2 via SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        passthrough = _split_passthrough(parser, argv)
        if passthrough is not None:
            return _passthrough(*passthrough)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except QuakemonError as exc:
        print(f"quakemon: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"quakemon: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
