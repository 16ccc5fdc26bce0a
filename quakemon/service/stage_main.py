"""Entry point of one stage process: `python -m quakemon.service.stage_main STAGE --config F [--overrides JSON]`.

The supervisor (`quakemon.service.daemon`) starts one process per stage with this module; it can also be started by
hand to spread stages over hosts (see `quakemon run --stages`). With `--hold`, ingest reports ready but reads
SeedLink only after SIGUSR1, which the supervisor sends once the local downstream stages are ready (so no
window is dropped while the model loads, and all stages import in parallel). SIGHUP re-reads --config (with the
same --overrides) and applies what may change while running (`quakemon.service.reload`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import structlog

from quakemon.base.errors import QuakemonError
from quakemon.base.signals import StopFlag, die_with_parent, install_stop_handlers, set_on_signals


def load_contract(checkpoint: str) -> Any:
    """The input contract of a checkpoint, read from its metadata without loading the weights."""
    from quakemon.models.checkpoint import read_metadata, resolve_checkpoint
    from quakemon.models.contract import InputContract

    return InputContract.from_dict(read_metadata(resolve_checkpoint(checkpoint))["contract"])


def build_stage(stage: str, cfg: Any, control: str | None, stop: StopFlag, go: threading.Event | None = None) -> Any:
    """The Stage object for `stage`; `go` (ingest only): an Event to wait for before reading SeedLink."""
    from quakemon.models.checkpoint import resolve_checkpoint
    from quakemon.service import stages

    if stage == "inference":
        import torch

        torch.set_num_threads(cfg.pipeline.torch_threads)
    if stage == "preprocess":  # numpy on the CPU: torch is imported only for a GPU (`preprocess_device`)
        from quakemon.pipeline.transforms import set_cpu_threads

        set_cpu_threads(cfg.pipeline.torch_threads)
    if stage == "ingest":
        return stages.IngestStage(cfg, load_contract(cfg.model.checkpoint), stop, control, go=go)
    if stage == "preprocess":
        return stages.PreprocessStage(cfg, load_contract(cfg.model.checkpoint), stop, control)
    if stage == "inference":
        configure = None
        if cfg.publish.curve_secret_key:
            from quakemon.wire.security import curve_server_configurator

            configure = curve_server_configurator(cfg.publish.curve_secret_key, cfg.publish.curve_allowed_keys)
        return stages.InferenceStage(cfg, stop, control, str(resolve_checkpoint(cfg.model.checkpoint)),
                                     configure_publisher=configure)
    raise QuakemonError(f"unknown stage {stage!r}; expected one of {stages.STAGES}")


def run_stage(stage: str, cfg: Any, control: str | None, stop: StopFlag | None = None,
              go: threading.Event | None = None, reload: tuple[threading.Event, Any] | None = None) -> int:
    """Run one stage until `stop` (startup -> main loop -> shutdown); returns the exit code. `reload`: (an Event
    set on SIGHUP, a function returning the config to reload), for the stages that apply a reloaded config
    (`quakemon.service.reload.ReloadableStage`)."""
    built = build_stage(stage, cfg, control, stop or StopFlag(), go)
    if reload is not None and hasattr(built, "reload_event"):
        built.reload_event, built.reload_config = reload
    return built.run()


def _profiled(stage: str, directory: str, run) -> int:
    """Diagnostics: run the stage under cProfile (QUAKEMON_PROFILE_DIR, optionally QUAKEMON_PROFILE_STAGES=a,b)
    and write <dir>/<stage>-<pid>.prof when it stops (`python -m pstats` reads it)."""
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(run)
    finally:
        os.makedirs(directory, exist_ok=True)
        profiler.dump_stats(os.path.join(directory, f"{stage}-{os.getpid()}.prof"))


def main(argv: Sequence[str] | None = None) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.service.config import load_config

    parser = argparse.ArgumentParser(prog="quakemon-stage")
    parser.add_argument("stage")
    parser.add_argument("--config")
    parser.add_argument("--overrides", default="{}", help="JSON object of section.key overrides")
    parser.add_argument("--control", default=None, help="supervisor's status endpoint")
    parser.add_argument("--parent", type=int, default=None, help="supervisor pid: stop when it is gone")
    parser.add_argument("--hold", action="store_true",
                        help="ingest: report ready, but read SeedLink only after SIGUSR1 (downstream ready)")
    args = parser.parse_args(argv)
    stop = StopFlag()
    install_stop_handlers(stop)
    reload = threading.Event()  # SIGHUP: re-read --config (the supervisor's reload; never the default: exit)
    set_on_signals(reload, [signal.SIGHUP])
    go = threading.Event()
    if args.hold:
        set_on_signals(go, [signal.SIGUSR1])
    else:
        go.set()
    if args.parent:  # started by the supervisor: do not outlive it
        die_with_parent()
        stop.watch_parent(args.parent)
    try:
        overrides = json.loads(args.overrides)
        cfg = load_config(args.config, overrides)
        reloading = (reload, lambda: load_config(args.config, overrides))
        configure_logging(cfg.logging.level, cfg.logging.format)
        structlog.contextvars.bind_contextvars(stage=args.stage)
        profile_dir = os.environ.get("QUAKEMON_PROFILE_DIR")
        if profile_dir and args.stage in os.environ.get("QUAKEMON_PROFILE_STAGES", args.stage).split(","):
            return _profiled(args.stage, profile_dir,
                             lambda: run_stage(args.stage, cfg, args.control, stop, go, reloading))
        return run_stage(args.stage, cfg, args.control, stop, go, reloading)
    except QuakemonError as exc:
        print(f"quakemon {args.stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the stage has closed its sockets and saved its state; skip the slow interpreter teardown
