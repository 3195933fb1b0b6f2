"""The actor system's lifecycle, in one place: start bottom-up and wait for each actor to answer, stop in
reverse, and supervise (an actor that dies is reported and restarted from the database; if restarts keep
failing, the process is told to exit non-zero rather than run half-alive).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from typing import Callable

import pykka
import redis

from core import messages as m
from actors.allocator import Allocator
from actors.blockwatch import BlockWatch
from actors.news import NewsBus
from actors.reconciler import ReconcilerActor
from actors.signer import Signer
from actors.notifier import Notifier
from chain.exposure import NodeExposure, exposure_report
from actors.transrv_shard import TransrvShard
from core.limits import (
    ACTOR_START_TIMEOUT_S, LOCK_CHECK_INTERVAL_S, MEMBERSHIP_INTERVAL_S, OWNER_LOCK_CHECK_INTERVAL_S, RESTARTS_MAX_PER_MINUTE, SCRAPE_ASK_TIMEOUT_S, TICK_INTERVAL_MS,
    db_pool_size,
)
from ledger.withdrawals import WithdrawalRules
from storage import walletkeys
from storage.db import connect_database, migrate
from storage.locks import SystemLock
from storage.rotation import require_ring
from storage.webhooks import seal_plaintext_secrets
from core.config import Config
from actors.directory import Directory
from core.money import AssetRegistry
from actors.router import Router
from web.idempotency import LocalMarks
from actors.transport import StreamClient, StreamHost, StreamNames, process_id
from core.errors import ConfigError, Unavailable, WalletError
from storage.fence import Fence
from storage.locks import NamedLock
from app.membership import Member, Membership, spread

log = logging.getLogger(__name__)

START_TIMEOUT_S = ACTOR_START_TIMEOUT_S
TICK_INTERVAL_S = TICK_INTERVAL_MS / 1000


@dataclasses.dataclass
class _Supervised:
    name: str
    factory: Callable[[], pykka.ActorRef]
    on_ref: Callable[[pykka.ActorRef], None]
    ref: pykka.ActorRef | None = None
    restarts: list[float] = dataclasses.field(default_factory=list)


class ActorSystem:
    def __init__(self, config: Config, on_fatal: Callable[[str], None] | None = None,
                 signer_clock_ms: Callable[[], int] | None = None,
                 reconcile_clock_ms: Callable[[], int] | None = None) -> None:
        self.config = config
        self.reconcile_clock_ms = reconcile_clock_ms  # the reconciler's interval clock (tests pass a fake one)
        self.signer_clock_ms = signer_clock_ms  # wall time of the signer's waits (tests pass a fake clock)
        self.on_fatal = on_fatal or (lambda reason: log.critical("actor system failed: %s", reason))
        self.assets = AssetRegistry.from_config(config)
        self.db = None
        self.redis: redis.Redis | None = None
        self.directory: Directory | None = None
        self.router: Router | None = None
        self.news: NewsBus | None = None
        self._children: list[_Supervised] = []  # in start order
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.failed: str | None = None
        self.lock: SystemLock | None = None
        self.node_exposure: list[NodeExposure] | None = None  # set once the nodes were probed (probe_nodes)
        # Cluster mode (DESIGN.md "Cluster mode"): the roles of this process and the shards it hosts; callees
        # elsewhere are reached through Redis Streams (actors/transport.py). Role "all" has no transport.
        self.roles = frozenset(config.roles)
        self.cluster = "all" not in self.roles
        # With etcd and no --shards, a transrv host starts with none and takes its share of them from the
        # member list (`_rebalance`); otherwise it hosts its --shards, all of them by default.
        self.shares_shards = bool(self.cluster and config.etcd_url and self.has_role("transrv")
                                  and not config.host_shards)
        self.local_shards: tuple[int, ...] = (
            (config.host_shards or tuple(range(config.shards)))
            if self.has_role("transrv") and not self.shares_shards else ())
        self.membership: Membership | None = None
        self.process = process_id()
        self._hosts: list[StreamHost] = []
        # Cluster mode's ownership: the database lock and the fence (epoch) of every shard and singleton here.
        self.owned: dict[str, tuple[NamedLock, Fence]] = {}
        self._fenced: set[int] = set()  # shards another host took over (their actor stopped itself)
        # With role all the system lock makes this process the only one serving its database, so requests in
        # flight are marked here rather than in Redis (every app built on this system shares the marks); a
        # gate of a cluster is one front among several: Redis.
        self.front_marks = None if self.cluster else LocalMarks()

    def abort_start(self) -> None:
        """From any thread: a start still waiting for a shard's lock gives up (SIGTERM during the wait)."""
        self._stopping.set()

    def has_role(self, role: str) -> bool:
        return "all" in self.roles or role in self.roles

    # -- start ---------------------------------------------------------------------------------------
    def start(self) -> ActorSystem:
        cfg = self.config
        if self.cluster and not cfg.redis_url:
            raise ConfigError("cluster roles need WALLET_REDIS_URL: Redis Streams carry the messages between them")
        if not self.cluster:
            # Before anything else: a second system on the same database would double-spend (storage/locks.py).
            self.lock = SystemLock(cfg.database_url).acquire()
        try:
            self._start_children(cfg)
        except BaseException:
            self.stop()
            raise
        self._spawn(self._tick_loop, "ticker")
        self._spawn(self._supervise_loop, "supervisor")
        # What is loaded by now (modules, the shards' books) lives as long as the system: keep it out of the
        # cyclic collector's full passes, each of which stalled every actor for ~30 ms (docs/BENCHMARKS.md).
        gc.collect()
        gc.freeze()
        log.info("actor system started", extra={"shards": cfg.shards, "roles": ",".join(sorted(self.roles)),
                                                "hosted_shards": ",".join(map(str, self.local_shards)),
                                                "process_id": self.process})
        return self

    def _start_children(self, cfg: Config) -> None:
        self.db = connect_database(cfg.database_url, db_pool_size(cfg.http_threads, cfg.shards))
        self._migrate()
        self.redis = redis.Redis.from_url(cfg.redis_url) if cfg.redis_url else None
        self.directory = Directory(self.redis, cfg.redis_prefix)
        self.router = Router(self.directory, cfg.shards, cfg.ask_timeout_s)
        self.news = self.router.news = NewsBus(self.redis, cfg.redis_prefix)
        if self.cluster:
            self.router.remote = StreamClient(self.redis, StreamNames(cfg.redis_prefix), self.process).start()
        ring = cfg.key_ring() if cfg.master_key else None
        if ring is not None:
            # Refuse to start on a ring that lacks a version some key or secret is under (it would fail later,
            # mid-request); then seal any webhook secret still in plaintext from before migration 0033.
            require_ring(ring)
            sealed = seal_plaintext_secrets(ring)
            if sealed:
                log.info("plaintext webhook secrets sealed under the master key", extra={"endpoints": sealed})
        if self.cluster and cfg.etcd_url:
            self.membership = Membership(cfg.etcd_url, cfg.etcd_prefix, Member(
                self.process, tuple(sorted(self.roles)), (), f"http://{cfg.ops_http}"), cfg.etcd_lease_s)
        if self.cluster:
            for role, name in (("accountsrv", "allocator"), ("signsrv", "signer"), ("blockwatch", "blockwatch")):
                if self.has_role(role):
                    self._own(name)
        if self.has_role("accountsrv"):
            self._start_child("allocator", lambda: Allocator.start(
                self.router, self.directory, cfg.shards, cfg.pool_low_watermark, ring,
                *self._singleton_fence("allocator")), lambda ref: self.router.set_actor("allocator", ref))
        rules = WithdrawalRules.from_config(cfg)
        self.rules = rules
        fences = {shard: self._own(f"shard-{shard}") for shard in self.local_shards} if self.cluster else {}
        self._start_together([self._shard_child(shard, fences.get(shard)) for shard in self.local_shards])
        if self.cluster:  # before the first tick: the outbox replay may need other hosts' shards
            self._host_inboxes([f"shard-{shard}" for shard in self.local_shards])
        if self.membership is not None:
            self._rebalance()  # register, and take the shards that are this host's and free
        # Only now can every shard reach every other: replay the outbox rows a previous run left
        # undelivered (loaded as due at once; a shard restarted alone replays them on the next tick).
        self._tick_shards()
        if self.has_role("accountsrv"):
            # Webhooks and the Redis event stream, from the event outbox (it asks no actor: any order).
            self._start_child("notifier", lambda: Notifier.start(cfg),
                              lambda ref: self.router.set_actor("notifier", ref))
        if cfg.rpc_urls and self.has_role("blockwatch"):
            # BlockWatch asks shards to credit: started after them, so stopped before them
            self.add_child("blockwatch", lambda: BlockWatch.start(cfg, self.router, self.assets,
                                                                  *self._singleton_fence("blockwatch")))
        if cfg.rpc_urls and ring is not None and walletkeys.wallet_address("hot") is not None \
                and self.has_role("signsrv"):
            # The signer tells BlockWatch what to watch: started after it, stopped before it.
            self.add_child("signer", lambda: Signer.start(cfg, self.router, self.assets, ring, self.signer_clock_ms,
                                                          *self._singleton_fence("signer")))
        if cfg.rpc_urls and self.has_role("signsrv"):
            # Reads what BlockWatch recorded and asks no actor: last to start, first to stop.
            self.add_child("reconciler", lambda: ReconcilerActor.start(cfg, self.reconcile_clock_ms))
        if self.cluster:
            self._host_inboxes([name for name in ("allocator", "blockwatch", "signer", "reconciler") if self.router.actor(name)])

    def _shard_child(self, shard: int, fence: Fence | None) -> _Supervised:
        return _Supervised(f"shard-{shard}", lambda: TransrvShard.start(
            shard, self.router, self.assets, self.config.shard_batch_max, self.rules, fence, self._fenced.add),
            lambda ref: self.router.set_shard(shard, ref))

    def _own(self, name: str) -> Fence:
        """Wait for the database lock of a shard or singleton (a live owner elsewhere keeps it; a dead one's
        is dropped by the server with its connection), then take the next epoch of its fence."""
        lock = NamedLock(self.config.database_url, name)
        waited = False
        while not lock.acquire(wait_s=1):
            if self._stopping.is_set():
                raise Unavailable(f"stopped while waiting to own {name}")
            if not waited:
                log.info("waiting for the owner of a shard to let go", extra={"owner_of": name})
                waited = True
        fence = Fence.take(self.db, name, self.process)
        self.owned[name] = (lock, fence)
        log.info("owning", extra={"owner_of": name, "epoch": fence.epoch, "lock_connection": lock.connection_id})
        return fence

    def _singleton_fence(self, name: str) -> tuple[Fence | None, Callable[[], None] | None]:
        """(fence, on_fenced) for a singleton actor: none with role all (the system lock covers everything)."""
        owned = self.owned.get(name)
        if owned is None:
            return None, None
        return owned[1], lambda: self._fail(f"{name} fenced out: another process owns it now")

    def _migrate(self) -> None:
        """Cluster processes may start together: one migrates at a time (the others then find nothing to do)."""
        if not self.cluster:
            migrate(self.db)
            return
        lock = NamedLock(self.config.database_url, "migrate")
        if not lock.acquire(wait_s=ACTOR_START_TIMEOUT_S):
            raise RuntimeError("another process has been migrating the database for too long")
        try:
            migrate(self.db)
        finally:
            lock.release()

    def _host_inboxes(self, targets: list[str]) -> None:
        """Serve each local callee's inbox stream; the host asks the router for the current ref, so a
        restarted actor is fed by the same host."""
        names = StreamNames(self.config.redis_prefix)
        for target in targets:
            if target.startswith("shard-"):
                shard = int(target.removeprefix("shard-"))
                resolve = lambda shard=shard: self.router.shard_ref(shard)  # noqa: E731
            else:
                resolve = lambda target=target: self.router.actor(target)  # noqa: E731
            self._hosts.append(StreamHost(self.redis, names, target, resolve, f"{self.process}:{target}",
                                          self.config.shard_batch_max).start())

    def add_child(self, name: str, factory: Callable[[], pykka.ActorRef],
                  on_ref: Callable[[pykka.ActorRef], None] | None = None) -> pykka.ActorRef:
        """Start and supervise another actor (BlockWatch, Signer) after the core is up."""
        return self._start_child(name, factory, on_ref or (lambda ref: self.router.set_actor(name, ref)))

    def _start_child(self, name: str, factory: Callable[[], pykka.ActorRef],
                     on_ref: Callable[[pykka.ActorRef], None]) -> pykka.ActorRef:
        child = _Supervised(name, factory, on_ref)
        child.ref = self._start_and_wait(child)
        self._children.append(child)
        return child.ref

    def _start_together(self, children: list[_Supervised]) -> None:
        """Start every child, then wait for each (Mopidy's start_backends): start-up costs the slowest
        shard's load, not the sum of them."""
        refs = [child.factory() for child in children]
        pings = [ref.ask(m.Ping(), block=False) for ref in refs]
        failed = None
        for child, ref, ping in zip(children, refs, pings):
            try:
                _expect_pong(ping.get(timeout=START_TIMEOUT_S))
            except (pykka.ActorDeadError, pykka.Timeout) as exc:
                failed = failed or RuntimeError(f"{child.name} failed to start: {exc!r}")
        if failed is not None:
            for ref in refs:
                ref.stop(block=False)
            raise failed
        for child, ref in zip(children, refs):
            child.ref = ref
            child.on_ref(ref)
            self._children.append(child)

    def _start_and_wait(self, child: _Supervised) -> pykka.ActorRef:
        ref = child.factory()
        # Ping answers only after on_start has loaded the actor's state; if on_start failed, the actor is dead.
        try:
            _expect_pong(ref.ask(m.Ping(), timeout=START_TIMEOUT_S))
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            ref.stop(block=False)
            raise RuntimeError(f"{child.name} failed to start") from exc
        child.on_ref(ref)
        return ref

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- run -----------------------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while not self._stopping.wait(TICK_INTERVAL_S):
            self._tick_shards()

    def _tick_shards(self) -> None:
        for shard in self.local_shards:
            self.router.tell_shard(shard, m.Tick())  # a dead shard (until its restart) drops it

    def _supervise_loop(self) -> None:
        next_lock_check = time.monotonic() + LOCK_CHECK_INTERVAL_S
        next_owner_check = time.monotonic() + OWNER_LOCK_CHECK_INTERVAL_S
        next_heartbeat = time.monotonic() + MEMBERSHIP_INTERVAL_S
        while not self._stopping.wait(0.2):
            for shard in list(self._fenced):
                self._let_go(shard)
            for child in list(self._children):
                if child.ref is not None and not child.ref.is_alive() and not self._stopping.is_set() \
                        and not self._is_fenced(child):
                    self._restart(child)
            if time.monotonic() >= next_lock_check:
                next_lock_check = time.monotonic() + LOCK_CHECK_INTERVAL_S
                if self.lock is not None and not self.lock.check() and not self._stopping.is_set():
                    self._fail("lost the exclusive database lock; another process may take over")
            if self.owned and time.monotonic() >= next_owner_check:
                next_owner_check = time.monotonic() + OWNER_LOCK_CHECK_INTERVAL_S
                self._check_owned_locks()
            if self.membership is not None and time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + MEMBERSHIP_INTERVAL_S
                try:
                    self._rebalance()
                except Exception:  # noqa: BLE001 - e.g. the database away: the supervisor must outlive it
                    log.exception("membership round failed; trying again at the next")

    def _check_owned_locks(self) -> None:
        for name, (lock, fence) in list(self.owned.items()):
            singleton = not name.startswith("shard-")
            if singleton and fence.lost and not self._stopping.is_set():
                # Fenced out by a transaction whose FenceLost another error may have hidden from the actor.
                self._fail(f"{name} fenced out: another process owns it now")
            elif not fence.lost and not lock.check():
                # Another host may own it already: the next batch must not even try to commit, and the shard
                # lets go at its next tick.
                log.critical("lost the database lock of a shard; fencing it", extra={"owner_of": name})
                fence.lost = True
                if singleton and not self._stopping.is_set():
                    # A singleton has no share to hand back: the process stops; restarted, it waits for the lock
                    # (a standby) while the new owner works.
                    self._fail(f"lost the database lock of {name}; another process may own it")

    # -- membership (etcd) ---------------------------------------------------------------------------
    def _rebalance(self) -> None:
        """Renew this process's registration and, on a transrv host sharing the shards, converge on its share
        of them: hand over the ones another host should hold now (a host joined), take the ones that are
        this host's and whose lock is free (a host died or handed them over). Nothing moves while etcd is
        unreachable; a shard whose lock is still held is tried again at the next round."""
        members = self.membership.heartbeat(self.local_shards)
        if members is None or not self.shares_shards or self._stopping.is_set():
            return
        hosts = [member.process for member in members if member.hosts_shards()]
        if self.process not in hosts:
            return  # our registration is not visible yet
        mine = set(spread(self.config.shards, hosts)[self.process])
        for shard in sorted(set(self.local_shards) - mine):
            self._hand_over(shard)
        for shard in sorted(mine - set(self.local_shards)):
            self._take(shard)

    def _take(self, shard: int) -> None:
        name = f"shard-{shard}"
        lock = NamedLock(self.config.database_url, name)
        if not lock.acquire(wait_s=0):
            return  # its previous owner has not let go yet (or is paused and still holds the lock)
        try:
            fence = Fence.take(self.db, name, self.process)
            self.owned[name] = (lock, fence)
            child = self._shard_child(shard, fence)
            child.ref = self._start_and_wait(child)
        except Exception:  # noqa: BLE001 - never keep a lock for a shard this host does not run
            log.exception("could not start a shard taken over; letting go", extra={"shard": shard})
            self.owned.pop(name, None)
            lock.release()
            return
        self._children.append(child)
        self.local_shards = tuple(sorted((*self.local_shards, shard)))
        self._host_inboxes([name])
        self.router.tell_shard(shard, m.Tick())  # replay what its outbox left undelivered, now
        log.info("took a shard", extra={"shard": shard, "epoch": fence.epoch, "lock_connection": lock.connection_id})

    def _hand_over(self, shard: int) -> None:
        """Another host should hold this shard now: let go of it cleanly (see `_release`)."""
        self._release(shard)
        log.info("handed a shard over", extra={"shard": shard})

    def _release(self, shard: int) -> None:
        """Stop taking the shard's inbox entries, let its actor finish what it was handed (answered and
        acknowledged; a fenced one has stopped itself), and only then release the lock for the next owner."""
        name = f"shard-{shard}"
        for host in [h for h in self._hosts if h.target == name]:
            host.stop()
            self._hosts.remove(host)
        for child in [child for child in self._children if child.name == name]:
            if child.ref is not None:
                child.ref.stop(timeout=30)  # no-op if it is already dead
        self._children = [child for child in self._children if child.name != name]
        self.router.set_shard(shard, None)
        self.local_shards = tuple(s for s in self.local_shards if s != shard)
        lock, _ = self.owned.pop(name, (None, None))
        if lock is not None:
            lock.release()

    @property
    def uses_etcd(self) -> bool:
        return self.membership is not None

    def cluster_map(self) -> list[dict] | None:
        """The members seen at the last heartbeat (at most MEMBERSHIP_INTERVAL_S old: no etcd call of its own);
        None without etcd or while it is away."""
        members = self.membership.seen if self.membership is not None else None
        return None if members is None else [member.to_dict() for member in members]

    def _is_fenced(self, child: _Supervised) -> bool:
        """A shard that stopped itself because another host took it over: let go of, never restarted. Read
        at the moment of the check: a shard fenced while the loop let go of others (each waits for its inbox
        host to stop) must not be restarted by the same pass (CI saw two such restarts leak an actor)."""
        return child.name.startswith("shard-") and int(child.name.removeprefix("shard-")) in self._fenced

    def _let_go(self, shard: int) -> None:
        """A shard fenced out: not restarted; its inbox is left to the new owner, its lock released."""
        self._release(shard)
        self._fenced.discard(shard)
        log.warning("let go of a shard", extra={"shard": shard})

    def _restart(self, child: _Supervised) -> None:
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60] + [now]
        log.error("actor died; restarting from the database", extra={"actor": child.name})
        if len(child.restarts) > RESTARTS_MAX_PER_MINUTE:
            self._fail(f"{child.name} died {len(child.restarts)} times in a minute")
            return
        try:
            child.ref = self._start_and_wait(child)
        except Exception as exc:  # noqa: BLE001 - any failure to restart is fatal for the system
            self._fail(f"{child.name} could not be restarted: {exc}")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._stopping.set()
        self.on_fatal(reason)

    def probe_nodes(self) -> list[NodeExposure]:
        """Ask every configured node what it exposes (unlocked accounts, admin namespaces): logged, kept for
        /metrics and /readyz. Slow only for a node that does not answer (one probe timeout)."""
        self.node_exposure = exposure_report(self.config.rpc_urls)
        return self.node_exposure

    def is_ready(self) -> dict[str, bool]:
        ready = {}
        for child in self._children:
            try:
                ready[child.name] = child.ref is not None and isinstance(child.ref.ask(m.Ping(), timeout=2.0), m.Pong)
            except (pykka.ActorDeadError, pykka.Timeout):
                ready[child.name] = False
        if self.cluster and self.has_role("gate"):
            ready.update(self._remote_reachability())
        return ready

    def _remote_reachability(self) -> dict[str, bool]:
        """A gate's view of the cluster: every shard and singleton answers a ping through its inbox stream."""
        shards = list(range(self.config.shards))
        replies = self.router.ask_shards([(shard, m.Ping()) for shard in shards], timeout=SCRAPE_ASK_TIMEOUT_S)
        reach = {f"remote:shard-{shard}": isinstance(reply, m.Pong) for shard, reply in zip(shards, replies)}
        for name in ("allocator",):
            try:
                reach[f"remote:{name}"] = isinstance(self.router.ask_actor(name, m.Ping(),
                                                                           timeout=SCRAPE_ASK_TIMEOUT_S), m.Pong)
            except WalletError:
                reach[f"remote:{name}"] = False
        return reach

    # -- stop ----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for host in self._hosts:  # no new entries for the actors; what is unacknowledged stays pending
            host.stop()
        self._hosts.clear()
        for child in reversed(self._children):
            if child.ref is not None:
                try:
                    child.ref.stop(timeout=30)
                except pykka.Timeout:
                    log.error("actor did not stop in time", extra={"actor": child.name})
        survivors = pykka.ActorRegistry.get_all()
        for ref in survivors:
            log.error("BUG: actor still alive after stop", extra={"actor": str(ref)})
        self._children.clear()
        if self.router is not None and self.router.remote is not None:
            self.router.remote.stop()
        if self.news is not None:
            self.news.close()
        if self.redis is not None:
            self.redis.close()
        if self.db is not None:
            if hasattr(self.db, "close_all"):
                self.db.close_all()
            else:
                self.db.close()
        if self.lock is not None:  # only once no actor can write any more
            self.lock.release()
            self.lock = None
        for lock, _ in self.owned.values():
            lock.release()
        self.owned.clear()
        if self.membership is not None:  # after the locks: a host taking our shards finds them free
            self.membership.leave()
            self.membership = None
        gc.unfreeze()  # what the stopped actors held is garbage now; let the collector see it again
        log.info("actor system stopped")


def _expect_pong(reply: object) -> None:
    assert isinstance(reply, m.Pong), f"an actor answered Ping with {reply!r}"
