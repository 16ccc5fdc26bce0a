"""Hot reload of `quakemon run` on SIGHUP (`systemctl reload quakemon`): what may change, and how stages apply it.

The supervisor (`quakemon.service.daemon`) re-reads its config file with the same command-line overrides,
checks it as at start-up, and compares it with the running config key by key:

- an invalid file, or one that changes a key outside RELOADABLE (endpoints, model, runtime_dir, journal, ...),
  is refused as a whole: `reload_refused` names the reason or the keys, and the running config stays;
- otherwise the resolved config is written to the runtime directory (`snapshot_path`, atomically) and the
  stages that apply a part of it get SIGHUP. Each re-reads its own --config (the snapshot: the supervisor
  starts every stage from it, so a stage restarted later runs the same config), applies its part and logs
  `config_reloaded`; its status reports `config_digest` of the config it runs, which tells the supervisor when
  every stage has applied it.

No stage process is restarted: the ingest stage re-subscribes (one new SeedLink handshake, resumed from the
sequence numbers it has, see `quakemon.ingest.seedlink.SeedLinkSource.set_streams`) and keeps the buffers of
the stations that stay; the inference stage changes thresholds in place, so open detections, the publisher
and its epoch stay.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

import structlog

from quakemon.base.errors import QuakemonError
from quakemon.base.files import atomic_write
from quakemon.service.config import Config
from quakemon.service.config_format import format_config

log = structlog.get_logger(__name__)

#: The keys a reload may change ("section.*": every key of the section but those in RESTART_ONLY).
RELOADABLE = ("seedlink.streams", "trigger.on", "trigger.off", "trigger.min_duration", "trigger.retrigger_hold",
              "trigger.overrides", "associate.*")
#: Keys of a RELOADABLE section that still need a restart (associate.enabled adds or removes the associator).
RESTART_ONLY = ("associate.enabled",)
#: The stage kinds that apply a part of a reloaded config (the preprocess stage has none).
RELOAD_STAGES = ("ingest", "inference")
SNAPSHOT_NAME = "running-config.toml"


def snapshot_path(runtime_dir: str) -> str:
    """Where the supervisor keeps the config it runs (one daemon per runtime directory)."""
    return os.path.join(runtime_dir, SNAPSHOT_NAME)


def write_snapshot(cfg: Config) -> str:
    """Write `cfg` (resolved, loadable again) to its `snapshot_path`, atomically; returns the path."""
    path = snapshot_path(cfg.pipeline.runtime_dir)
    atomic_write(path, lambda fh: fh.write(format_config(cfg).encode()))
    return path


def config_digest(cfg: Config) -> str:
    """A short hash of the resolved config: equal configs give equal digests in every process."""
    return hashlib.sha256(format_config(cfg).encode()).hexdigest()[:16]


def changed_keys(old: Config, new: Config) -> list[str]:
    """The "section.key" names whose values differ, sorted."""
    a, b = old.to_dict(), new.to_dict()
    return sorted(f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k])


def reloadable(key: str) -> bool:
    """Whether "section.key" may change without a restart (RELOADABLE, RESTART_ONLY)."""
    return key not in RESTART_ONLY and (key in RELOADABLE or f"{key.partition('.')[0]}.*" in RELOADABLE)


def restart_keys(old: Config, new: Config) -> list[str]:
    """The changed keys that need a restart."""
    return [k for k in changed_keys(old, new) if not reloadable(k)]


def validate_reload(old: Config, new: Config) -> list[str]:
    """The changed keys of an acceptable reload; a QuakemonError naming the keys that need a restart, or saying why
    the new [associate] section cannot be used (an unreadable inventory), otherwise."""
    needs_restart = restart_keys(old, new)
    if needs_restart:
        raise QuakemonError(f"{', '.join(needs_restart)}: changed, but only a restart applies "
                            f"{'it' if len(needs_restart) == 1 else 'them'} (systemctl restart quakemon)")
    changed = changed_keys(old, new)
    if new.associate.enabled and any(k.startswith("associate.") for k in changed):
        from quakemon.pipeline.associate import associator_from_config

        associator_from_config(new.associate)  # reads associate.inventory: ConfigError
    return changed


class ReloadableStage:
    """What a stage needs to apply a reloaded config; mixed into the ingest and inference stages.

    `reload_event` (set on SIGHUP by `quakemon.service.stage_main`) and `reload_config` (re-reads the stage's
    --config and --overrides) are given by the process that runs the stage; without them nothing reloads. The
    stage calls `maybe_reload()` from its main loop and implements `apply_reload(new, changed)`, which must change
    nothing when it raises, and returns what it changed (for the `config_reloaded` line).
    """

    name: str
    cfg: Config
    reload_event: threading.Event | None = None
    reload_config: Callable[[], Config] | None = None
    _digest: str | None = None

    def reload_stats(self) -> dict[str, Any]:
        """The status entry the supervisor waits for: {"config_digest": digest of the running config}."""
        if self._digest is None:
            self._digest = config_digest(self.cfg)
        return {"config_digest": self._digest}

    def maybe_reload(self) -> None:
        """Apply a new config if SIGHUP asked for one; an unusable one is logged (`reload_refused`) and ignored."""
        if self.reload_event is None or self.reload_config is None or not self.reload_event.is_set():
            return
        self.reload_event.clear()
        try:
            new = self.reload_config()
            needs_restart = restart_keys(self.cfg, new)
            if needs_restart:
                raise QuakemonError(f"{', '.join(needs_restart)}: changed, but only a restart applies them")
            changed = changed_keys(self.cfg, new)
            details = self.apply_reload(new, changed) if changed else {}
        except QuakemonError as exc:
            log.error("reload_refused", stage=self.name, reason=str(exc), action="the stage keeps its config")
            return
        self.cfg, self._digest = new, None
        log.info("config_reloaded", stage=self.name, changed=changed, **details)

    def apply_reload(self, new: Config, changed: list[str]) -> dict[str, Any]:
        raise NotImplementedError


def reselect_windower(windower: Any, streams: list[str], components: str) -> list[str]:
    """Give a running `quakemon.pipeline.windowing.StationWindower` new stream selectors; returns the stations
    whose buffers were dropped (no selector matches them any more). The counters of a dropped station stay in the
    windower's totals (counters never go back), and it leaves the silence monitor."""
    from quakemon.ingest.selectors import SelectorSet

    selected = SelectorSet(streams)
    windower.selectors, windower._selector_set = list(streams), selected
    gone = [key for key in windower.schedulers
            if not any(selected.matches(f"{key[0]}.{key[1]}{c}") for c in components)]
    for key in gone:
        windower._merge_stats(windower.schedulers.pop(key))
    stations = sorted({station for station, _ in gone} - {station for station, _ in windower.schedulers})
    for station in stations:
        windower.silence.last.pop(station, None)
        windower.silence.silent.discard(station)
    return stations
