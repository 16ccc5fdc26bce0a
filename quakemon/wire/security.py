"""CURVE keys and authentication for the detection PUB socket, and the socket options that keep it safe.

- `keygen` writes a zmq certificate pair and makes the secret file 0600 (and its directory 0700) explicitly:
  `zmq.auth.create_certificates` follows the umask, so under the usual 022 it writes world-readable secrets.
- `make_curve_server` turns a socket into a CURVE server whose ZAP handler (a `ThreadAuthenticator`)
  admits only the client public keys found in one directory (*.key files). Unknown keys and plain (NULL)
  clients complete no handshake and receive nothing.
- `curve_server_configurator` wraps it as a publisher's `configure_socket(socket)` hook.
- `make_curve_client` is the subscriber side.
- The publisher's own socket options (per-peer HWM, ZMTP heartbeats, handshake deadline, linger: what keeps a
  stuck, unauthenticated or vanished peer from holding it) are set by
  `quakemon.wire.publisher.Publisher.from_config` from [publish].
- `HandshakeMonitor` counts handshake failures (e.g. `HANDSHAKE_FAILED_AUTH`) for metrics and logs, per reason
  (`handshake_failure_reason`: the protocol error or ZAP status a monitor event carries).
- `RejectingAuthenticator` (the ZAP handler `make_curve_server` starts) logs each refused CURVE client with
  the peer's IP address and public key, which only the ZAP request carries (the socket monitor's events name
  the local endpoint), and counts refusals per reason (`rejections`: "Unknown key", ...). A client whose
  security mechanism does not match (a plain NULL client) fails before ZAP: only the monitor's
  HANDSHAKE_FAILED_* events see it.
- `adapt_to_write_xor_execute` keeps CPU inference working under systemd's MemoryDenyWriteExecute=yes:
  torch's oneDNN backend JIT-compiles convolution kernels (writable+executable memory) and fails with
  "could not create a primitive" when W^X is enforced; torch's native kernels need no JIT.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import structlog
import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from quakemon.base.errors import ConfigError

log = structlog.get_logger(__name__)


def keygen(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create `name.key` (public) and `name.key_secret` (secret, mode 0600) in `directory` (mode 0700)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    log.info("curve_keys_written", public=public, secret=secret)
    return Path(public), Path(secret)


def _load_secret(path: str | Path, what: str) -> tuple[bytes, bytes]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: expected a zmq secret key file (from `quakemon keygen`), got {str(path)!r}"
                          " which does not exist")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("curve_secret_key_readable_by_others", path=str(path), mode=oct(mode), expected="0600")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{what}: {str(path)!r} is not a zmq certificate: {exc}") from None
    if secret is None:
        raise ConfigError(f"{what}: expected a secret key file (*.key_secret), got the public-only {str(path)!r}")
    return public, secret


def _load_public(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: expected a zmq public key file, got {str(path)!r} which does not exist")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{what}: {str(path)!r} is not a zmq certificate: {exc}") from None
    return public


class RejectingAuthenticator(ThreadAuthenticator):
    """A `ThreadAuthenticator` that logs and counts every refused client (see the module docstring).

    Logs `curve_client_rejected` (peer address, client key, reason, how often that peer and key were refused)
    for the first refusal of each peer and key and then every `LOG_EVERY`-th, so a client retrying every
    100 ms does not flood the log. `rejections` (reason -> count) and `rejected_peers` are read from any thread.
    """

    LOG_EVERY = 100
    MAX_PEERS = 1024  # distinct (address, key) pairs remembered for the log's rate limit

    def __init__(self, context: zmq.Context | None = None) -> None:
        super().__init__(context)
        self.rejections: Counter[str] = Counter()
        self.rejected_peers: Counter[tuple[str, str]] = Counter()
        self._request: tuple[str, str, str] = ("", "", "")  # (address, mechanism, client key) being answered

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        address = msg[3].decode(errors="replace") if len(msg) > 3 else ""
        mechanism = msg[5].decode(errors="replace") if len(msg) > 5 else ""
        key = ""
        if mechanism == "CURVE" and len(msg) > 6 and len(msg[6]) == 32:
            key = zmq.utils.z85.encode(msg[6]).decode()
        self._request = (address, mechanism, key)
        try:
            await super().handle_zap_message(msg)
        finally:
            self._request = ("", "", "")

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            address, mechanism, key = self._request
            reason = status_text.decode(errors="replace") or status_code.decode(errors="replace")
            self.rejections[reason] += 1
            peer = (address, key)
            if peer not in self.rejected_peers and len(self.rejected_peers) >= self.MAX_PEERS:
                self.rejected_peers.clear()
            self.rejected_peers[peer] += 1
            n = self.rejected_peers[peer]
            if n == 1 or n % self.LOG_EVERY == 0:
                log.warning("curve_client_rejected", peer=address or None, client_key=key or None,
                            mechanism=mechanism or None, reason=reason, status=status_code.decode(errors="replace"),
                            refusals=n)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def make_curve_server(
    socket: zmq.Socket, secret_key_file: str | Path, allowed_keys_dir: str | Path, context: zmq.Context,
    section: str = "publish",
) -> RejectingAuthenticator:
    """Make `socket` a CURVE server admitting only the public keys in `allowed_keys_dir` (*.key).

    Call before bind(). Returns the started authenticator; the caller stops it after closing the socket.
    `section`: the config section whose curve_secret_key / curve_allowed_keys errors name.
    """
    public, secret = _load_secret(secret_key_file, f"{section}.curve_secret_key")
    allowed = Path(allowed_keys_dir)
    if not allowed.is_dir():
        raise ConfigError(f"{section}.curve_allowed_keys: expected a directory of client public keys (*.key), "
                          f"got {str(allowed)!r} which is not a directory")
    n_keys = len(list(allowed.glob("*.key")))
    if n_keys == 0:
        log.warning("curve_no_allowed_keys", directory=str(allowed), effect="every subscriber is refused")
    auth = RejectingAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    log.info("curve_server_enabled", allowed_keys=n_keys, directory=str(allowed))
    return auth


class CurveServerConfigurator:
    """`configure(socket)` callable for a publisher: makes the socket a CURVE server (see `make_curve_server`).

    The key files are checked when it is built, so a bad path fails at start-up with exit code 2. The
    authenticator lives on the socket's context: call `stop()` after closing the socket and before
    `context.term()`, which otherwise waits for the authenticator's socket forever.
    """

    def __init__(self, secret_key_file: str | Path, allowed_keys_dir: str | Path) -> None:
        _load_secret(secret_key_file, "publish.curve_secret_key")
        if not Path(allowed_keys_dir).is_dir():
            raise ConfigError(f"publish.curve_allowed_keys: expected a directory of client public keys (*.key), "
                              f"got {str(allowed_keys_dir)!r} which is not a directory")
        self.secret_key_file = secret_key_file
        self.allowed_keys_dir = allowed_keys_dir
        self.authenticator: RejectingAuthenticator | None = None
        self._rejections: Counter[str] = Counter()  # of authenticators stopped before the current one

    def __call__(self, socket: zmq.Socket) -> None:
        self.stop()
        self.authenticator = make_curve_server(socket, self.secret_key_file, self.allowed_keys_dir, socket.context)

    @property
    def rejections(self) -> dict[str, int]:
        """Refused clients by reason since this configurator was built (for a stage's status counters)."""
        total = Counter(self._rejections)
        if self.authenticator is not None:
            total.update(dict(self.authenticator.rejections))
        return dict(total)

    def stop(self) -> None:
        """Stop the authenticator (idempotent)."""
        if self.authenticator is not None:
            self._rejections.update(dict(self.authenticator.rejections))
            try:
                self.authenticator.stop()
            except zmq.ZMQError as exc:  # context already terminating: too late, term() may now hang
                log.error("curve_authenticator_stop_failed", error=str(exc), hint="stop() before context.term()")
            self.authenticator = None


def curve_server_configurator(secret_key_file: str | Path, allowed_keys_dir: str | Path) -> CurveServerConfigurator:
    """A publisher's `configure_socket` hook for [publish] curve_secret_key / curve_allowed_keys."""
    return CurveServerConfigurator(secret_key_file, allowed_keys_dir)


def make_curve_client(socket: zmq.Socket, client_secret_file: str | Path, server_public_file: str | Path) -> None:
    """Make `socket` a CURVE client with its own key pair that trusts the given server key. Call before connect()."""
    public, secret = _load_secret(client_secret_file, "client secret key")
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = _load_public(server_public_file, "server public key")


_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_"):] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}


def handshake_failure_reason(name: str, value: int) -> str:
    """Why a handshake failed, from a monitor event (name, value): the ZMTP/ZAP protocol error
    (e.g. "ZMTP_MECHANISM_MISMATCH": a plain client on a CURVE socket), the ZAP status code ("ZAP_400": an
    unknown key), or the errno name; the event name when the value says nothing more."""
    if name == "HANDSHAKE_FAILED_PROTOCOL":
        return _PROTOCOL_ERRORS.get(value, f"PROTOCOL_{value}")
    if name == "HANDSHAKE_FAILED_AUTH":
        return f"ZAP_{value}"
    if name == "HANDSHAKE_FAILED_NO_DETAIL" and value:
        return errno.errorcode.get(value, f"ERRNO_{value}")
    return name


class HandshakeMonitor:
    """Counts a socket's connection events by name (HANDSHAKE_FAILED_AUTH, DISCONNECTED, ...) on a thread, and
    failed handshakes by reason (`reasons`). The events name the socket's local endpoint, not the peer: for the
    peer's address, see `RejectingAuthenticator`.

    `on_event(name)` is called on the monitor thread for each event (e.g. to bump a metric). Call `stop()`
    from the thread that owns the socket, before closing it.
    """

    def __init__(self, socket: zmq.Socket, on_event: Callable[[str], None] | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()  # failed handshakes by `handshake_failure_reason`
        self._on_event = on_event
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socket = socket
        self._monitor = socket.get_monitor_socket()
        self._thread = threading.Thread(target=self._run, name="quakemon-zmq-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                event = recv_monitor_message(self._monitor)
                try:
                    name = zmq.Event(event["event"]).name
                except ValueError:
                    name = f"EVENT_{event['event']}"
                if name == "MONITOR_STOPPED":
                    break
                with self._lock:
                    self.counts[name] += 1
                if name.startswith("HANDSHAKE_FAILED"):
                    reason = handshake_failure_reason(name, int(event.get("value") or 0))
                    with self._lock:
                        self.reasons[reason] += 1
                    endpoint = event.get("endpoint")
                    log.warning("zmq_handshake_failed", zmq_event=name, reason=reason,
                                endpoint=endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else endpoint)
                if self._on_event is not None:
                    self._on_event(name)
        except zmq.ZMQError as exc:
            if not self._stop.is_set():
                log.warning("zmq_monitor_stopped", error=str(exc))
        finally:
            self._monitor.close(linger=0)

    def count(self, name: str) -> int:
        with self._lock:
            return self.counts[name]

    def stop(self, timeout: float = 2.0) -> None:
        """Stop monitoring and close the monitor socket; waits at most `timeout` s.

        The monitor is disabled while our end is still open and read (libzmq then sends MONITOR_STOPPED;
        disabling after closing our end blocks forever).
        """
        if self._thread.is_alive():
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._thread.join(timeout)
        self._stop.set()
        self._thread.join(timeout)


def write_xor_execute_enforced() -> bool:
    """True when this process may not map memory writable and executable (MemoryDenyWriteExecute=yes, MDWE)."""
    try:
        m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, PermissionError):
        return True
    m.close()
    return False


def adapt_to_write_xor_execute() -> bool:
    """Under enforced W^X, turn off torch's JIT-compiling oneDNN backend; call before building the model.

    Returns True when W^X is enforced (and oneDNN was disabled). CPU convolutions then use torch's native
    kernels (slower; docs/performance.md gives the figure). torch is imported only in that case.
    """
    if not write_xor_execute_enforced():
        return False
    import torch

    torch.backends.mkldnn.enabled = False
    log.info("write_xor_execute_enforced", onednn="disabled", reason="oneDNN JIT needs writable+executable memory")
    return True
