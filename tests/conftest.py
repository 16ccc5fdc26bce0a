"""Shared fixtures: small models and checkpoints built by the tests themselves (never downloaded), free ports."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest
import structlog
import torch

from quakemon.base import net

# Tests share 2 cores with whatever else runs; keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    from support import pipeline

    pipeline.STARTED.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that started processes (tests/support/pipeline.Proc) shows their last log lines and the
    machine's load: a timeout in CI is otherwise a guess."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        from support import pipeline

        for proc in pipeline.STARTED:
            report.sections.append((f"{proc.name} (pid {proc.pid}) stderr, last lines", pipeline.log_tail(proc)))
        if pipeline.STARTED:
            report.sections.append(("load average (1, 5, 15 min)", " ".join(f"{x:.2f}" for x in os.getloadavg())))
            report.sections.append(("quakemon processes alive", pipeline.quakemon_processes()))


@pytest.fixture(autouse=True)
def _restore_logging():
    """A test that runs a command's main() in process configures structlog (its level included) and the root
    logger; undo that, so that the tests after it, in whatever order, capture the logs they expect."""
    handlers = list(logging.getLogger().handlers)
    level = logging.getLogger().level
    config = structlog.get_config()
    yield
    if structlog.get_config() != config:
        structlog.configure(**config)
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised TINY depth-1 checkpoint with the default input contract."""
    from quakemon.models import HybridViT, save_checkpoint
    from quakemon.models.contract import InputContract

    torch.manual_seed(0)
    contract = InputContract()
    model = HybridViT("TINY", depth=1, img_size=contract.spectrogram_shape, dropout=0.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model.eval(), ["noise", "earthquake"], contract, provenance={"note": "random test weights"})
    return path


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`quakemon.base.net.free_port`: call it for a TCP port on 127.0.0.1 that was free a moment ago."""
    return net.free_port
