"""Reconciler: compares the ledger with the chain every WALLET_RECONCILE_INTERVAL_MS (DESIGN.md "Treasury").
A thin shell over treasury.reconcile.Reconciler: it keeps time (a self-scheduled tick, the interval measured
on an injectable clock in milliseconds), opens its own chain client, and answers RunReconcile.

It changes no money and asks no actor, so it starts after BlockWatch in any order and a failed run (no
node, no block recorded yet) is logged and tried again at the next interval.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping


from actors.base import Actor, Handler, TickTimer
from chain.errors import ChainError
from chain.nodes import ChainClient
from core import messages as m
from core.config import Config
from storage.db import database_proxy
from storage.models import now_ms
from treasury.reconcile import Reconciler, reconciler_for

log = logging.getLogger(__name__)

TICK_S_MAX = 1.0  # the timer wakes at least this often, so a fake clock that jumps is noticed soon


class ReconcilerActor(Actor):
    def __init__(self, config: Config, wall_ms: Callable[[], int] | None = None) -> None:
        super().__init__()
        self.config = config
        self.wall_ms = wall_ms or now_ms
        self.logic: Reconciler | None = None
        self.chain: ChainClient | None = None
        self.last_run_ms = 0
        self.last: m.ReconcileSummary | None = None
        self._ticks = TickTimer(self.actor_ref, m.Tick())

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        self.logic = reconciler_for(self.config, db, self.wall_ms)
        self.chain = ChainClient(self.config.rpc_urls, expected_chain_id=self.config.chain_id,
                                 health_timeout_s=self.config.chain_health_timeout_s)
        # The first run comes one interval after start, not at once: a service that has just started (a fresh
        # demo, a node still syncing) has nothing settled to compare yet, and an alarm then would be noise.
        self.last_run_ms = self.wall_ms()
        self.actor_ref.tell(m.Tick())

    def on_stop(self) -> None:
        self._ticks.cancel()
        if self.chain is not None:
            self.chain.close()
        database_proxy.obj.close()

    def handlers(self) -> Mapping[type, Handler]:
        return {
            m.Tick: self._tick,
            m.RunReconcile: lambda msg: self._run("on_demand"),
            m.Ping: lambda msg: m.Pong("reconciler"),
        }

    def _tick(self, message: m.Tick) -> None:
        try:
            now = self.wall_ms()
            if now - self.last_run_ms >= self.config.reconcile_interval_ms:
                self.last_run_ms = now
                self._run("interval")
        finally:
            self._ticks.after(min(self.config.reconcile_interval_ms / 1000, TICK_S_MAX))

    def _run(self, trigger: str) -> m.ReconcileSummary:
        try:
            if self.chain.chain_id is None:
                self.chain.start()
            report = self.logic.run(self.chain.session(), trigger)
        except (ChainError, LookupError) as exc:
            log.warning("reconciliation not run", extra={"error": str(exc)})
            return m.ReconcileSummary(None, None, False, (), str(exc))
        self.last = m.ReconcileSummary(report.id, report.block_number, report.clean,
                                       tuple((line.asset, line.drift) for line in report.lines if line.drift))
        return self.last


