"""The daemon's configuration: typed, frozen, loaded once from TOML and validated strictly.

Every key has a default (see config/quakemon.toml, which lists them all), so a minimal file names only the
SeedLink server, the streams, the state file and the publish endpoint. Validation refuses unknown keys at
any level (suggesting the closest known key), wrong types and out-of-range values with a `ConfigError`
(exit code 2) that names the file, the key as `section.key`, the expected and the actual value.

Path keys (state_file, checkpoint, curve_*) expand `$VAR` / `${VAR}`, so that a unit file can point at
`${CREDENTIALS_DIRECTORY}` or `${STATE_DIRECTORY}`. Pipeline endpoints set to "auto" resolve at load time
to ipc:// sockets under the runtime directory (systemd's $RUNTIME_DIRECTORY when set), and state_file "auto"
to systemd's $STATE_DIRECTORY or the user's XDG state directory (`quakemon.service.paths`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quakemon.base.errors import ConfigError
from quakemon.pipeline.settings import (
    ASSOCIATION,
    INFERENCE,
    SCREEN,
    TRIGGER,
    WINDOW,
    CalibrationSettings,
    check_trigger_overrides,
)
from quakemon.service.config_checks import (
    Invalid,
    auto_endpoint,
    auto_or_count,
    catchup_endpoint,
    check_screen_net,
    device_name,
    endpoint,
    env_path,
    in_range,
    listen_address,
    non_empty,
    one_of,
    server_address,
    setting,
    stream_list,
)
from quakemon.service.paths import default_runtime_dir, default_state_file


def derive_catchup(pub: str) -> str:
    """The "auto" catch-up endpoint: tcp://host:port+1 (a port "*" or 0, any free port, stays so: heartbeats
    carry the one bound), ipc://path.catchup."""
    if pub.startswith("tcp://"):
        host, _, port = pub.rpartition(":")
        return pub if port in ("*", "0") else f"{host}:{int(port) + 1}"
    return f"{pub}.catchup"


# -- sections ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedLinkConfig:
    """[seedlink]: the upstream SeedLink server and what to ask it for."""

    server: str = setting("127.0.0.1:18000", "SeedLink server as host:port", server_address)
    streams: tuple[str, ...] = setting((), 'selectors "NET.STA.LOC.CHA"; ? and * in LOC and CHA; required by run',
                                       stream_list)
    state_file: str = setting("auto", 'sequence numbers for resume; "auto" = seedlink.state in $STATE_DIRECTORY, '
                              'else in $XDG_STATE_HOME/quakemon or ~/.local/state/quakemon; "" = no resume', env_path)
    netto: float = setting(30.0, "seconds without data before the connection counts as dead",
                           in_range(0, 3600, lo_open=True))
    reconnect_backoff_max: float = setting(30.0, "cap of the exponential reconnect backoff, s",
                                           in_range(0, 3600, lo_open=True))
    connect_timeout: float = setting(10.0, "TCP connect and handshake timeout, s", in_range(0, 600, lo_open=True))
    resume_policy: str = setting("earliest", "when the resume seq is gone: earliest buffered packet or now",
                                 one_of("earliest", "now"))
    station_silence_s: float = setting(60.0, "a station with no record this long is reported silent (log, metric); "
                                       "0 = off, s", in_range(0, 86400))


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """[model]: which checkpoint runs where, and how inference is batched."""

    checkpoint: str = setting("", 'safetensors checkpoint; "" = the bundled model', env_path)
    device: str = setting(INFERENCE.device, '"auto" (CUDA if present, else CPU), "cpu", "cuda" or "cuda:N"',
                          device_name)
    precision: str = setting(INFERENCE.precision, "auto = bf16 on CUDA if supported, else fp32",
                             one_of("auto", "fp32", "bf16", "fp16"))
    graph: str = setting(INFERENCE.graph, 'auto = a frozen TorchScript graph on the CPU, the eager model on CUDA; '
                         '"eager" = always the eager model', one_of("auto", "eager"))
    batch_size: int = setting(64, "largest inference micro-batch, windows", in_range(1, 4096))
    max_wait_ms: float = setting(50.0, "longest wait to fill a micro-batch, ms", in_range(0, 60_000))
    inference_workers: str | int = setting("auto", 'threads running model forwards at once: "auto" (one per core '
                                           "up to 4 on the CPU, 1 on CUDA), or a count; 0 = on the inference stage's "
                                           "own thread", auto_or_count(64), mixed=True)
    on_fatal_gpu_error: str = setting("exit", "exit (systemd restarts) or fall back to cpu", one_of("exit", "cpu"))
    max_consecutive_failures: int = setting(3, "inference failures in a row that count as fatal", in_range(1, 1000))
    screen_every: int = setting(SCREEN.every, "screen and refine: forward one window in this many of a quiet "
                                "station (1 = every window)", in_range(1, 60))
    screen_threshold: float = setting(SCREEN.threshold, "screen score from which a station's every window is "
                                      "forwarded (stations whose trigger.off is not above it: always)",
                                      in_range(0, 0.99, lo_open=True))
    screen_net: str = setting("", 'cascade screen checkpoint (quakemon.training.screen_distill) instead of screening '
                              'one window in screen_every; "" = off', env_path)


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """[window]: the window grid (length and rate come from the checkpoint)."""

    stride_s: float = setting(WINDOW.stride_s, "window start grid step, s (start = k * stride since the epoch)",
                              in_range(0, 3600, lo_open=True))
    max_missing_fraction: float = setting(WINDOW.max_missing,
                                          "windows missing more than this fraction are not inferred",
                                          in_range(0, 1))


def _overrides(v: tuple) -> tuple[tuple[str, tuple[tuple[str, float], ...]], ...]:
    """[trigger.overrides], kept as sorted (target, sorted (key, value) pairs) so the config stays frozen."""
    try:
        return tuple(sorted((k, tuple(sorted(d.items()))) for k, d in check_trigger_overrides(dict(v)).items()))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


@dataclass(frozen=True, slots=True)
class TriggerConfig:
    """[trigger]: turning window probabilities into detections (on/off hysteresis)."""

    on: float = setting(TRIGGER.on, "probability that opens a detection", in_range(0, 1, lo_open=True))
    off: float = setting(TRIGGER.off, "probability below which it closes (0 < off <= on)", in_range(0, 1, lo_open=True))
    min_duration: float = setting(TRIGGER.min_duration_s, "shortest detection worth publishing, s", in_range(0, 3600))
    label: str = setting(TRIGGER.label, "class label that triggers", non_empty)
    retrigger_hold: float = setting(TRIGGER.retrigger_hold_s, "a re-trigger this long after a detection fell below off "
                                    "extends it (one detection per event and station), s", in_range(0, 3600))
    split_on_new_p: bool = setting(TRIGGER.split_on_new_p, "a clearly new P (a picked onset above the picker's "
                                   "SNR gate, 20 s or more after the detection's pick) closes an open detection "
                                   "and opens a new one")
    overrides: tuple = setting((), 'on, off, min_duration per network or station, e.g. { "BW.RJOB" = { on = 0.8 } }',
                               _overrides)
    calibration: str = setting("off", '"rate": each station\'s own on, raised to hold calibration_rate false '
                               'detections per day on its last calibration_history seconds; "off"',
                               one_of("off", "rate"))
    calibration_rate: float = setting(1.0, "target detections per station-day with calibration", in_range(0, 86400))
    calibration_history: float = setting(6 * 3600.0, "data a station's calibrated threshold is learnt from, s",
                                         in_range(600, 90 * 86400))

    def overrides_map(self) -> dict[str, dict[str, float]]:
        """`overrides` as {target: {key: value}} (what `TriggerBank` takes)."""
        return {k: dict(v) for k, v in self.overrides}

    def calibration_settings(self) -> CalibrationSettings | None:
        """The per-station calibration these keys ask for, or None when it is off."""
        if self.calibration == "off":
            return None
        return CalibrationSettings(mode=self.calibration, rate_per_day=self.calibration_rate,
                                   history_s=self.calibration_history)

    def detection_kwargs(self) -> dict[str, Any]:
        """The trigger keywords of `DetectionStage` and `DetectionRunner` for these settings (all but the label,
        which each caller checks against its checkpoint): the daemon, its backfill and a replay trigger alike."""
        return {"on": self.on, "off": self.off, "min_duration_s": self.min_duration,
                "retrigger_hold_s": self.retrigger_hold, "split_on_new_p": self.split_on_new_p,
                "overrides": self.overrides_map(), "calibration": self.calibration_settings()}


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """[pipeline]: stage processes and the sockets between them."""

    preprocess_workers: int = setting(1, "preprocessing worker processes", in_range(1, 64))
    preprocess_device: str = setting("auto", '"auto" (the model\'s device when that is a GPU, else CPU), "cpu", "cuda"'
                                     ' or "cuda:N"', device_name)
    runtime_dir: str = setting("auto", 'directory for ipc:// sockets; "auto" = $RUNTIME_DIRECTORY or a per-user dir',
                               env_path)
    windows_endpoint: str = setting("auto", 'scheduler -> preprocess PUSH/PULL; "auto" = ipc://<runtime_dir>/windows',
                                    auto_endpoint)
    spectra_endpoint: str = setting("auto", 'preprocess -> inference PUSH/PULL; "auto" = ipc://<runtime_dir>/spectra',
                                    auto_endpoint)
    queue_hwm: int = setting(2000, "windows each stage may queue before dropping the oldest (about 10 s x stations)",
                             in_range(1, 1_000_000))
    torch_threads: int = setting(1, "torch threads per preprocess/inference process (scale with processes)",
                                 in_range(1, 256))
    heartbeat_interval_s: float = setting(1.0, "heartbeat period on the publish socket, s",
                                          in_range(0, 60, lo_open=True))
    curve: str = setting("auto", 'CURVE on the stage sockets: "auto" = on for tcp:// endpoints on a non-loopback '
                         'address, "on" = on every stage endpoint, "off"', one_of("auto", "on", "off"))
    curve_secret_key: str = setting("", "stage key pair (secret file from `quakemon keygen`), the same on every stage "
                                    "host", env_path)
    curve_allowed_keys: str = setting("", 'directory of stage public keys (*.key) a binding stage admits; "" = the '
                                      "directory of curve_secret_key", env_path)


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """[publish]: the detection PUB socket and its CURVE security."""

    endpoint: str = setting("tcp://127.0.0.1:5557", "PUB endpoint subscribers connect to", endpoint)
    curve_secret_key: str = setting("", 'server secret key file (zmq certificate); "" = no CURVE', env_path)
    curve_allowed_keys: str = setting("", "directory of allowed client public keys (needed with curve_secret_key)",
                                      env_path)
    sndhwm: int = setting(1000, "messages queued per subscriber before it misses some", in_range(1, 10_000_000))
    zmq_heartbeat_ivl_s: float = setting(1.0, "ZMTP ping period per peer, s", in_range(0, 600, lo_open=True))
    zmq_heartbeat_timeout_s: float = setting(3.0, "a peer silent this long is disconnected, s",
                                             in_range(0, 600, lo_open=True))
    handshake_ivl_s: float = setting(5.0, "a peer that has not finished the handshake by then is dropped, s",
                                     in_range(0, 600, lo_open=True))
    linger_s: float = setting(1.0, "how long close() may wait for unsent messages, s", in_range(0, 60))
    journal: str = setting("auto", 'detection journal (SQLite) for lossless delivery; "auto" = seedlink.state_file '
                           'with its suffix replaced by .journal.sqlite (off when that is ""); "" = off', env_path)
    journal_synchronous: str = setting("full", "full = fsync every message (survives power loss), normal = only "
                                       "at checkpoints (survives a process crash)", one_of("full", "normal"))
    journal_retention_days: float = setting(30.0, "messages older than this are deleted; 0 = no age limit, days",
                                            in_range(0, 36_500))
    journal_max_bytes: int = setting(1 << 30, "oldest messages are deleted beyond this much journal; 0 = no size "
                                     "limit, bytes", in_range(0, 1 << 50))
    catchup_endpoint: str = setting("auto", 'ROUTER endpoint answering missed seqs from the journal; "auto" = the '
                                    'publish port + 1 (tcp) or "<path>.catchup" (ipc); "" = none', catchup_endpoint)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """[metrics]: the Prometheus HTTP endpoint."""

    listen: str = setting("", 'host:port for /metrics, e.g. "127.0.0.1:9108"; "" = off', listen_address)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """[logging]: structlog output."""

    level: str = setting("info", "debug, info, warning, error or critical",
                         one_of("debug", "info", "warning", "error", "critical"))
    format: str = setting("auto", "json, console, or auto (console on a terminal, else JSON)",
                          one_of("json", "console", "auto"))


def _weights(v: tuple) -> tuple[tuple[str, float], ...]:
    """A TOML table of station = weight, kept as sorted (station, weight) pairs so the config stays frozen."""
    bad = {k: w for k, w in v if not isinstance(w, int | float) or isinstance(w, bool) or w < 0}
    if bad:
        raise Invalid(f'a table of station = weight >= 0, e.g. {{ "BW.UH1" = 2.0 }} (bad: {bad})')
    return tuple(sorted((str(k), float(w)) for k, w in v))


@dataclass(frozen=True, slots=True)
class AssociateConfig:
    """[associate]: network coincidence of station detections into events (like ObsPy's coincidence trigger)."""

    enabled: bool = setting(False, "publish event.<id> messages when enough stations trigger together")
    threshold: float = setting(ASSOCIATION.threshold, "weighted number of stations that makes an event",
                               in_range(0, 10_000, lo_open=True))
    window_s: float = setting(ASSOCIATION.window_s, "onsets within this many seconds coincide",
                              in_range(0, 3600, lo_open=True))
    hold_s: float = setting(ASSOCIATION.hold_s,
                            "an event is decided this long after the newest onset (order independence), s",
                            in_range(0, 3600))
    retrigger_s: float = setting(ASSOCIATION.retrigger_s,
                                 "a station re-triggering within this long stays in its event (a window), s",
                                 in_range(0, 3600))
    weights: tuple[tuple[str, float], ...] = setting((), 'per-station weights, e.g. { "BW.UH1" = 2.0 }', _weights)
    default_weight: float = setting(ASSOCIATION.default_weight, "weight of stations not in weights",
                                    in_range(0, 10_000))
    inventory: str = setting("", 'StationXML for travel-time bounds between stations; "" = none', env_path)
    velocity_kms: float = setting(ASSOCIATION.velocity_kms, "slowest apparent velocity for the travel-time bound, km/s",
                                  in_range(0, 100, lo_open=True))
    tolerance_s: float = setting(ASSOCIATION.tolerance_s, "slack added to the travel-time bound, s", in_range(0, 600))


def _backfill_source(v: str) -> str:
    from quakemon.ingest.backfill import SOURCE_FORMS, valid_source

    if not valid_source(v):
        raise Invalid(SOURCE_FORMS)
    return v


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    """[backfill]: gaps SeedLink cannot fill, read afterwards from an archive (`quakemon.ingest.backfill`)."""

    source: str = setting("", '"sds:///path", "fdsn://host[:port]" or an http(s):// FDSN URL; "" = off',
                          _backfill_source)
    delay_s: float = setting(300.0, "wait this long after a gap before reading it (archives lag), s",
                             in_range(0, 86400))
    max_span_s: float = setting(21600.0, "backfill at most the newest this many seconds of a gap",
                                in_range(1, 30 * 86400))
    attempts: int = setting(6, "reads of a span before it is given up (backoff 1 s doubling to 5 min)",
                            in_range(1, 1000))


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """[archive]: what the daemon keeps on disk for review (quakemon.pipeline.probarchive)."""

    probabilities: str = setting("", 'SDS directory for every window\'s class probabilities as MiniSEED; "" = off',
                                 env_path)
    probabilities_flush_s: float = setting(120.0, "longest a probability waits in memory before it is written, s",
                                           in_range(0, 86_400, lo_open=True))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, one frozen section per TOML table."""

    seedlink: SeedLinkConfig = field(default_factory=SeedLinkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    associate: AssociateConfig = field(default_factory=AssociateConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}} with lists for tuples: plain data for JSON, TOML or logs."""
        return {
            name: {f.name: _plain(getattr(getattr(self, name), f.name)) for f in dataclasses.fields(cls)}
            for name, cls in _sections().items()
        }


def _plain(v: Any) -> Any:
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) for x in v):
        return {k: _plain(x) for k, x in v}
    return list(v) if isinstance(v, tuple) else v


def _sections() -> dict[str, type]:
    """Section name -> its dataclass, in file order."""
    return {
        "seedlink": SeedLinkConfig, "model": ModelConfig, "window": WindowConfig, "trigger": TriggerConfig,
        "pipeline": PipelineConfig, "publish": PublishConfig, "metrics": MetricsConfig, "logging": LoggingConfig,
        "associate": AssociateConfig, "backfill": BackfillConfig, "archive": ArchiveConfig,
    }


# -- loading -------------------------------------------------------------------------------------------------


def _type_name(t: type) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", tuple: "an array of strings"}[t]


def _coerce(value: Any, default: Any, from_text: bool) -> Any:
    """Check the TOML type against the default's type; CLI overrides may also come as strings."""
    want = type(default)
    if from_text and isinstance(value, str) and want in (int, float):
        try:
            value = want(value.strip())
        except ValueError:
            raise Invalid(_type_name(want)) from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is tuple and isinstance(value, Mapping):  # a TOML table (associate.weights): (key, value) pairs
        return tuple(value.items())
    if want is tuple:
        if isinstance(value, list | tuple) and all(isinstance(x, str) for x in value):
            return tuple(value)
        raise Invalid(_type_name(want))
    if type(value) is not want:
        raise Invalid(_type_name(want))
    return value


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(known)}"


def _build_section(cls: type, name: str, table: Any, where: str, from_text: bool) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{name}] must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in fields:
            known = [f"{name}.{k}" for k in fields]
            raise ConfigError(f"{where}: unknown key {name}.{key}{_suggest(f'{name}.{key}', known)}")
        f = fields[key]
        try:
            value = raw if f.metadata.get("mixed") else _coerce(raw, f.default, from_text)
            check = f.metadata["check"]
            values[key] = check(value) if check else value
        except Invalid as exc:
            raise ConfigError(f"{where}: {name}.{key}: expected {exc}, got {raw!r}") from None
    return cls(**values)


def _resolve(cfg: Config, where: str) -> Config:
    """Cross-key checks, "auto" endpoints and paths."""
    if cfg.seedlink.state_file == "auto":
        cfg = dataclasses.replace(cfg, seedlink=dataclasses.replace(cfg.seedlink, state_file=default_state_file()))
    t, p, pub = cfg.trigger, cfg.pipeline, cfg.publish
    if not t.off <= t.on:
        raise ConfigError(f"{where}: trigger.off: expected 0 < off <= trigger.on ({t.on}), got {t.off}")
    try:
        check_trigger_overrides({k: dict(d) for k, d in t.overrides}, t.on, t.off)
    except ValueError as exc:
        raise ConfigError(f"{where}: trigger.overrides: expected {exc}") from None
    if bool(pub.curve_secret_key) != bool(pub.curve_allowed_keys):
        missing = "publish.curve_allowed_keys" if pub.curve_secret_key else "publish.curve_secret_key"
        raise ConfigError(
            f"{where}: {missing}: expected a path when the other CURVE key is set "
            f"(curve_secret_key={pub.curve_secret_key!r}, curve_allowed_keys={pub.curve_allowed_keys!r})"
        )
    runtime_dir = default_runtime_dir() if p.runtime_dir == "auto" else p.runtime_dir
    windows = p.windows_endpoint if p.windows_endpoint != "auto" else f"ipc://{runtime_dir}/windows"
    spectra = p.spectra_endpoint if p.spectra_endpoint != "auto" else f"ipc://{runtime_dir}/spectra"
    for key, value in (("windows_endpoint", windows), ("spectra_endpoint", spectra)):
        try:
            endpoint(value)
        except Invalid as exc:
            raise ConfigError(f"{where}: pipeline.{key}: expected {exc} (from runtime_dir), got {value!r}") from None
    if windows == spectra:
        raise ConfigError(f"{where}: pipeline.spectra_endpoint: expected an endpoint other than "
                          f"pipeline.windows_endpoint, got {spectra!r} for both")
    if pub.endpoint in (windows, spectra):
        raise ConfigError(f"{where}: publish.endpoint: expected an endpoint not used by the pipeline, "
                          f"got {pub.endpoint!r}")
    pipeline = dataclasses.replace(p, runtime_dir=runtime_dir, windows_endpoint=windows, spectra_endpoint=spectra)
    return dataclasses.replace(cfg, pipeline=pipeline, publish=_resolve_journal(cfg, where, (windows, spectra)))


def _resolve_journal(cfg: Config, where: str, taken: tuple[str, ...]) -> PublishConfig:
    """publish.journal "auto" -> a path (or "" with no state file); catchup_endpoint "auto" -> an endpoint."""
    pub = cfg.publish
    journal = pub.journal
    if journal == "auto":
        state = cfg.seedlink.state_file
        journal = f"{os.path.splitext(state)[0]}.journal.sqlite" if state else ""  # one per state file
    catchup = pub.catchup_endpoint
    if not journal:
        if catchup not in ("", "auto"):
            raise ConfigError(f"{where}: publish.catchup_endpoint: expected \"\" or \"auto\" without a journal "
                              f"(publish.journal = \"\"), got {catchup!r}")
        catchup = ""
    elif catchup == "auto":
        catchup = derive_catchup(pub.endpoint)
        try:
            endpoint(catchup)
            if catchup.startswith("tcp://") and not catchup.endswith(":*") and int(catchup.rpartition(":")[2]) > 65535:
                raise Invalid("a port <= 65535")
        except Invalid as exc:
            raise ConfigError(f"{where}: publish.catchup_endpoint: expected {exc} (\"auto\" from publish.endpoint), "
                              f"got {catchup!r}; set it explicitly") from None
    if catchup and not catchup.endswith((":*", ":0")) and (catchup == pub.endpoint or catchup in taken):
        raise ConfigError(f"{where}: publish.catchup_endpoint: expected an endpoint not used by publish.endpoint "
                          f"or the pipeline, got {catchup!r}")
    return dataclasses.replace(pub, journal=journal, catchup_endpoint=catchup)


def _resolve_screen_net(cfg: Config, every_given: bool, where: str) -> Config:
    """model.screen_net: the file must be a screen for the configured detector (`check_screen_net`); it replaces
    the K-screen, so screen_every becomes 1 unless it was given, and refuses a screen_every > 1 given."""
    m = cfg.model
    if not m.screen_net:
        return cfg
    if every_given and m.screen_every > 1:
        raise ConfigError(f"{where}: model.screen_net: expected model.screen_every = 1 with a cascade screen (the two "
                          f"exclude each other), got screen_every = {m.screen_every}")
    try:
        check_screen_net(m.screen_net, m.checkpoint)
    except Invalid as exc:
        raise ConfigError(f"{where}: model.screen_net: expected {exc}") from None
    return dataclasses.replace(cfg, model=dataclasses.replace(m, screen_every=1))


def check_journal(config: Config, where: str = "config") -> None:
    """Open (creating it if needed) and close publish.journal: an unusable file is a ConfigError (exit 2) naming
    the key and the file, raised before the daemon starts its stages."""
    from quakemon.wire.journal import Journal, JournalError

    pub = config.publish
    if not pub.journal:
        return
    try:
        Journal(pub.journal, synchronous=pub.journal_synchronous).close()
    except JournalError as exc:
        raise ConfigError(f"{where}: publish.journal: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {str(path)!r} is not readable (permission denied)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def load_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None, *, require_streams: bool = False
) -> Config:
    """Load, validate and resolve a config file; `overrides` ("section.key" -> value) win over the file.

    path None means defaults only. Override values may be strings (CLI flags) and are checked like file
    values; None values are ignored (a flag that was not given). require_streams: `quakemon run` needs at
    least one [seedlink] streams selector. Raises ConfigError (exit code 2) naming the file and the key.
    """
    where = f"config file {str(path)!r}" if path is not None else "config (defaults)"
    data = _read_toml(Path(path)) if path is not None else {}
    sections = _sections()
    built: dict[str, Any] = {}
    for name in data:
        if name not in sections:
            known = [f"[{s}]" for s in sections]
            raise ConfigError(f"{where}: unknown section [{name}]{_suggest(f'[{name}]', known)}")
    for name, cls in sections.items():
        built[name] = _build_section(cls, name, data.get(name, {}), where, from_text=False)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        name, _, key = dotted.partition(".")
        if name not in sections or not key:
            known = [f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)]
            raise ConfigError(f"override: unknown key {dotted}{_suggest(dotted, known)}")
        merged = {**data.get(name, {}), key: value}
        built[name] = _build_section(sections[name], name, merged, "command-line override", from_text=True)
        data = {**data, name: merged}
    config = _resolve_screen_net(_resolve(Config(**built), where), "screen_every" in data.get("model", {}), where)
    if require_streams:
        check_stages(["ingest"], config, where=where)
    return config


# -- stages --------------------------------------------------------------------------------------------------

#: The pipeline stages of `quakemon run`, in data-flow order; each runs as its own process.
STAGES = ("ingest", "preprocess", "inference")
#: Exit code of a stage that must not be restarted in place (poisoned GPU): the daemon exits non-zero.
EXIT_FATAL = 70


def check_stages(stages: str | Sequence[str] | None, config: Config | None = None, *, key: str = "stages",
                 where: str = "config") -> list[str]:
    """The stages to run, checked; the one place that decides which stage lists `quakemon run` accepts.

    `stages`: None = all of STAGES; a string is a comma-separated list (the `--stages` flag). Every name must be
    one of STAGES and at least one must be given (ConfigError naming `key`). With `config`, the ingest stage
    needs at least one seedlink.streams selector (ConfigError naming seedlink.streams, prefixed by `where`).
    """
    if stages is None:
        names = list(STAGES)
    else:
        names = [s.strip() for s in stages.split(",") if s.strip()] if isinstance(stages, str) else list(stages)
        if not names or any(s not in STAGES for s in names):
            raise ConfigError(f"{key}: expected a comma-separated subset of {','.join(STAGES)}, got {stages!r}")
    if config is not None and "ingest" in names and not config.seedlink.streams:
        raise ConfigError(f'{where}: seedlink.streams: expected at least one selector like "BW.RJOB..EH?" '
                          "for the ingest stage of `quakemon run`, got []")
    return names
