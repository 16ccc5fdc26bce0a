"""The `quakemon` command: parse, load config, call one function. Exit codes: 0 ok, 2 usage/config, 1 runtime."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from quakemon.errors import ConfigError, QuakemonError


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None):
    from quakemon.config import load_config
    from quakemon.logs import configure_logging

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        overrides[key.strip()] = value.strip()
    cfg = load_config(getattr(args, "config", None), overrides)
    configure_logging(getattr(args, "log_level", None) or cfg.logging.level, cfg.logging.format)
    return cfg, overrides


def _cmd_run(args: argparse.Namespace) -> int:
    from quakemon.daemon import run_daemon

    cfg, overrides = _config(args, {"model.checkpoint": args.model})
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    return run_daemon(cfg, args.config, overrides, stages)


def _cmd_replay(args: argparse.Namespace) -> int:
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.replay import replay

    cfg, _ = _config(args, {"model.checkpoint": args.model})
    ckpt = load_checkpoint(resolve_checkpoint(cfg.model.checkpoint))
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    t = cfg.trigger
    try:
        result = replay(args.paths, ckpt, output=out, stride_s=cfg.window.stride_s,
                        selectors=args.select or None,
                        trigger={"on": t.on, "off": t.off, "min_duration_s": t.min_duration, "trigger_label": t.label,
                                 "max_missing": cfg.window.max_missing_fraction},
                        device=cfg.model.device, precision=cfg.model.precision,
                        batch_size=max(cfg.model.batch_size, 256), progress=not args.quiet,
                        keep_series=bool(args.plot))
    finally:
        if out is not sys.stdout:
            out.close()
    if args.plot:
        from quakemon.plot import plot_replay

        plot_replay(args.paths, result, args.plot, selectors=args.select or None)
    new = sum(1 for d in result.detections if d["state"] == "new")
    print(f"replay: {result.windows} windows, {new} detections", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from quakemon.logs import configure_logging
    from quakemon.seedlink_server import serve

    configure_logging(args.log_level or "info", "auto")
    return serve(args.paths, host=args.host, port=args.port, speed=args.speed, loop=args.loop,
                 retime_now=args.retime_now) or 0


def _cmd_listen(args: argparse.Namespace) -> int:
    from quakemon.listen import main as listen_main

    return listen_main(args.listen_argv)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from quakemon.config import check_config_main

    return check_config_main(args.file)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from quakemon.security import keygen

    public, secret = keygen(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from quakemon.train_cli import train_main

    _config(args)
    return train_main(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from quakemon.train_cli import evaluate_main

    _config(args)
    return evaluate_main(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from quakemon.demo import run_demo

    return run_demo(duration_s=args.duration, plot=args.plot, speed=args.speed)


def _cmd_bench(args: argparse.Namespace) -> int:
    from quakemon.bench import bench_main

    return bench_main(args)


def _cmd_params(args: argparse.Namespace) -> int:
    from quakemon.models.params import main

    main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quakemon", description="Streaming seismic event detector.")
    parser.add_argument("--log-level", default=None, help="override logging.level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
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
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--output", "-o", default="-", help="JSON Lines file, or - for stdout")
    p.add_argument("--plot", help="write a PNG of waveforms, probabilities and detections")
    p.add_argument("--select", action="append", metavar="NET.STA.LOC.CHA", help="stream selector (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = cmd("serve", _cmd_serve, "SeedLink v3 server streaming archived MiniSEED")
    p.add_argument("paths", nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as the client reads")
    p.add_argument("--loop", action="store_true", help="repeat the archive, shifted forward in time")
    p.add_argument("--retime-now", action="store_true", help="shift record times so the archive starts now")

    p = cmd("listen", _cmd_listen, "subscribe and print detections; reports seq gaps and silence")
    p.add_argument("listen_argv", nargs=argparse.REMAINDER, help="ENDPOINT [--topic PREFIX] [--json] ...")

    p = cmd("check-config", _cmd_check_config, "validate a config file and print the resolved values")
    p.add_argument("file")

    p = cmd("keygen", _cmd_keygen, "write a CURVE key pair (secret file mode 0600)")
    p.add_argument("directory")
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
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--plot", default="quakemon-demo.png", help="PNG written at the end")
    p.add_argument("--speed", type=float, default=2.0, help="how much faster than real time to stream")

    p = cmd("bench", _cmd_bench, "capacity and throughput on this machine")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="write the figures as JSON")
    p.add_argument("--device", default="auto")

    cmd("params", _cmd_params, "print the exact parameter count of every backbone")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None and hasattr(args, "set"):
        args.config = None
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except QuakemonError as exc:
        print(f"quakemon: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
