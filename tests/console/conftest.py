"""One console service per module (see support.py); its actors live across the module's tests, so the
per-test check that no actor survives is done once, when the module's service stops."""

from __future__ import annotations

import pykka
import pytest

from tests.console.support import ModuleServices, start_console


@pytest.fixture(autouse=True)
def _no_actor_survives():
    """Overrides tests/conftest.py's per-test check: `console` below checks at the module's end."""
    yield


@pytest.fixture(scope="module")
def console():
    with ModuleServices() as services:
        served = start_console(services.db_url, services.redis_prefix, services.node)
        try:
            yield served
        finally:
            served.stop()
            survivors = pykka.ActorRegistry.get_all()
            pykka.ActorRegistry.stop_all()
            assert not survivors, f"actors left running: {survivors}"
