"""Cluster membership in etcd (DESIGN.md "Cluster mode"): every process of a cluster registers under a lease
(`{prefix}/members/{process id}` → its roles and the shards it holds); transrv hosts read the member list
and each computes, from the same list, the same map of which host should hold which shard (`spread`).

etcd only says who should own a shard; it never makes two owners impossible. That is the fence's job
(storage/fence.py): a shard moves only when its lock in the database is free, and a paused owner that
lost its lock cannot commit. So when etcd cannot be reached, `heartbeat` answers None and the caller
keeps what it holds and moves nothing until etcd answers again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Iterable
from urllib.parse import urlparse

import etcd3gw
import requests
from etcd3gw.exceptions import Etcd3Exception

from core.limits import ETCD_CALL_TIMEOUT_S

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Member:
    process: str
    roles: tuple[str, ...]
    shards: tuple[int, ...]  # the shards it holds now (what /readyz and the console show)
    ops_url: str

    def to_dict(self) -> dict:
        return {"process": self.process, "roles": list(self.roles), "shards": list(self.shards),
                "ops_url": self.ops_url}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Member:
        data = json.loads(raw)
        return cls(str(data["process"]), tuple(map(str, data["roles"])), tuple(int(s) for s in data["shards"]),
                   str(data.get("ops_url", "")))

    def hosts_shards(self) -> bool:
        return "transrv" in self.roles or "all" in self.roles


def spread(shard_count: int, hosts: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Shard s goes to the (s mod n)-th live transrv host in id order: every host computes the same map from
    the same member list, and two hosts' shard counts differ by at most one."""
    ordered = sorted(set(hosts))
    if not ordered:
        return {}
    return {host: tuple(range(index, shard_count, len(ordered))) for index, host in enumerate(ordered)}


def etcd_client(url: str) -> etcd3gw.Etcd3Client:
    parsed = urlparse(url)
    # api_path fixed: etcd 3.4's gateway is /v3/; discovery would cost a request at every (re)connect.
    return etcd3gw.Etcd3Client(host=parsed.hostname, port=parsed.port or 2379, protocol=parsed.scheme,
                               timeout=ETCD_CALL_TIMEOUT_S, api_path="/v3/")


class ClusterMap:
    """Read-only view of the members (gates, the console): who is up and which shards each holds."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = etcd_client(url)
        self.members_prefix = f"/{prefix.strip('/')}/members/"

    def members(self) -> list[Member] | None:
        """Every registered member in id order; None when etcd cannot be reached."""
        try:
            rows = self.client.get_prefix(self.members_prefix)
        except (Etcd3Exception, requests.RequestException) as exc:
            log.debug("etcd unreachable", extra={"error": str(exc)})
            return None
        members = []
        for value, _ in rows:
            try:
                members.append(Member.from_json(value))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed member entry in etcd")
        return sorted(members, key=lambda member: member.process)

    def close(self) -> None:
        self.client.session.close()


class Membership(ClusterMap):
    """This process's registration: kept alive by `heartbeat`, re-made if its lease lapsed (etcd was away
    longer than the lease), revoked at a clean stop so the others see it leave at once."""

    def __init__(self, url: str, prefix: str, me: Member, lease_s: int) -> None:
        super().__init__(url, prefix)
        self.me = me
        self.lease_s = lease_s
        self.key = self.members_prefix + me.process
        self._lease: etcd3gw.Lease | None = None
        self._published: Member | None = None
        self.reachable: bool | None = None  # None until the first heartbeat
        self.seen: list[Member] | None = None  # the members read by the last heartbeat (None: etcd away)

    def heartbeat(self, shards: tuple[int, ...]) -> list[Member] | None:
        """Renew (or re-make) the registration with the shards held now, then read the members. None when
        etcd cannot be reached: the caller then changes nothing."""
        me = dataclasses.replace(self.me, shards=tuple(sorted(shards)))
        try:
            if self._lease is None or self._lease.refresh() <= 0:
                if self._lease is not None:
                    log.warning("membership lease lapsed; registering again", extra={"member": me.process})
                self._lease = self.client.lease(self.lease_s)
                self._published = None
            if me != self._published:
                self.client.put(self.key, me.to_json(), lease=self._lease)
                self._published = me
        except (Etcd3Exception, requests.RequestException, KeyError, ValueError) as exc:
            self._reachable(False, exc)
            self.seen = None
            return None
        self.seen = self.members()
        self._reachable(self.seen is not None, None)
        return self.seen

    def _reachable(self, reachable: bool, error: Exception | None) -> None:
        if reachable != self.reachable:
            if reachable:
                log.info("etcd reachable: membership registered", extra={"member": self.me.process})
            else:
                log.error("etcd unreachable: keeping the shards held, moving none", extra={"error": str(error)})
        self.reachable = reachable

    def leave(self) -> None:
        """Revoke the lease (its key goes with it): the other hosts take this one's shards without waiting
        for the lease to lapse. Best effort: if etcd is away the lease lapses by itself."""
        if self._lease is not None:
            try:
                self._lease.revoke()
            except (Etcd3Exception, requests.RequestException) as exc:
                log.warning("could not revoke the membership lease", extra={"error": str(exc)})
            self._lease = None
        self.close()
