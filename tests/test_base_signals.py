"""quakemon.base.signals: handlers only have an Event set, and never deadlock the thread they interrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from quakemon.base import signals

# A process whose main thread waits on and clears an Event as fast as it can (so a signal often arrives while it
# holds the Event's lock), counting the signals it saw, until SIGTERM. It prints "ready", then the counts.
BUSY_WAITER = textwrap.dedent("""
    import signal, sys, threading
    from quakemon.base.signals import StopFlag, install_stop_handlers, set_on_signals

    stop, poked = StopFlag(), threading.Event()
    install_stop_handlers(stop)
    set_on_signals(poked, [signal.SIGUSR1])
    print("ready", flush=True)
    rounds = seen = 0
    while not stop.is_set():
        if poked.wait(0):
            seen += 1
            poked.clear()
        rounds += 1
    print(rounds, seen, flush=True)
""")


def test_a_signal_arriving_while_the_main_thread_holds_the_events_lock_never_hangs_the_process():
    """Thousands of SIGUSR1 land on a main thread busy in `Event.wait`/`clear`. A handler calling `Event.set()`
    itself soon waits for the lock its own thread holds: the process hangs, deaf to SIGTERM (or, with signals
    this frequent, nests handlers until a RecursionError kills it). Here it keeps seeing the signals and stops
    on SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_WAITER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        sent, until = 0, time.monotonic() + 3.0
        while time.monotonic() < until and proc.poll() is None:
            os.kill(proc.pid, signal.SIGUSR1)
            sent += 1
            if sent % 50 == 0:
                time.sleep(0.001)  # let it run a few rounds between bursts
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the process hung: SIGTERM was not honoured within 20 s")
    assert proc.returncode == 0, err[-3000:]
    rounds, seen = map(int, out.split())
    assert sent > 1000 and rounds > 0 and seen > 0, (sent, rounds, seen)


def test_a_handler_sets_its_event_and_restore_puts_the_old_handler_back():
    event = threading.Event()
    previous = signals.set_on_signals(event, [signal.SIGUSR1])
    try:
        assert signal.getsignal(signal.SIGUSR1) not in previous.values()
        signal.raise_signal(signal.SIGUSR1)
        assert event.wait(5.0)
    finally:
        signals.restore_handlers(previous)
    assert signal.getsignal(signal.SIGUSR1) == previous[signal.SIGUSR1]


def test_off_the_main_thread_nothing_is_installed():
    out: list[dict] = []
    thread = threading.Thread(target=lambda: out.append(signals.set_on_signals(threading.Event(), [signal.SIGUSR1])))
    thread.start()
    thread.join()
    assert out == [{}]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_gets_its_own_relay():
    """A child forked from a process with a relay has no relay thread: its handlers set the child's Event."""
    signals.restore_handlers(signals.set_on_signals(threading.Event(), [signal.SIGUSR1]))  # a relay exists here
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when the signal set the Event
        code = 1
        try:
            event = threading.Event()
            signals.set_on_signals(event, [signal.SIGUSR2])
            signal.raise_signal(signal.SIGUSR2)
            code = 0 if event.wait(5.0) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
