"""Membership in the real etcd (scripts/services.sh starts it): registration under a lease, the member list,
leaving, a lapsed lease, an unreachable etcd; and the shard map every host computes from the same list."""

from __future__ import annotations

from hypothesis import given, strategies as st

from app.membership import ClusterMap, Member, Membership, etcd_client, spread
from core.ports import free_port
from tests.conftest import ETCD_URL
from tests.helpers import wait_until


@given(st.integers(min_value=1, max_value=64), st.lists(st.text("abcdef0123", min_size=1, max_size=6),
                                                         min_size=1, max_size=10, unique=True), st.randoms())
def test_every_shard_has_one_host_and_counts_differ_by_at_most_one(shards, hosts, rng):
    got = spread(shards, hosts)
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    assert spread(shards, shuffled) == got  # the same map whatever order the members were read in
    assert set(got) == set(hosts)
    assigned = sorted(shard for owned in got.values() for shard in owned)
    assert assigned == list(range(shards))
    counts = [len(owned) for owned in got.values()]
    assert max(counts) - min(counts) <= 1


def test_a_host_dying_or_joining_moves_only_what_the_spread_says():
    assert spread(4, ["a", "b"]) == {"a": (0, 2), "b": (1, 3)}
    assert spread(4, ["a"]) == {"a": (0, 1, 2, 3)}
    assert spread(4, []) == {}


def _member(name: str, roles=("transrv",)) -> Member:
    return Member(name, roles, (), f"http://127.0.0.1:1/{name}")


def test_members_register_see_each_other_and_leave(etcd_prefix):
    a = Membership(ETCD_URL, etcd_prefix, _member("a"), lease_s=5)
    b = Membership(ETCD_URL, etcd_prefix, _member("b", ("gate",)), lease_s=5)
    try:
        a.heartbeat((0, 1))
        seen = b.heartbeat(())
        assert [(m.process, m.roles, m.shards) for m in seen] == [("a", ("transrv",), (0, 1)), ("b", ("gate",), ())]
        assert [m.hosts_shards() for m in seen] == [True, False]
        assert a.heartbeat((1,))[0].shards == (1,)  # what it holds now is published at the next heartbeat
        a.leave()  # the lease is revoked: gone at once, not after 5 s
        assert [m.process for m in b.heartbeat(())] == ["b"]
    finally:
        a.leave()
        b.leave()


def test_a_member_that_stops_renewing_drops_out_when_its_lease_lapses(etcd_prefix):
    quiet = Membership(ETCD_URL, etcd_prefix, _member("quiet"), lease_s=2)
    view = ClusterMap(ETCD_URL, etcd_prefix)
    try:
        quiet.heartbeat(())
        assert [m.process for m in view.members()] == ["quiet"]
        wait_until(lambda: view.members() == [], timeout_s=15, interval_s=0.2, what="the lapsed member gone")
        # Its next heartbeat finds the lease expired and registers again under a new one.
        assert [m.process for m in quiet.heartbeat(())] == ["quiet"]
    finally:
        quiet.leave()
        view.close()


def test_a_lease_revoked_behind_its_back_is_made_again(etcd_prefix):
    member = Membership(ETCD_URL, etcd_prefix, _member("m"), lease_s=5)
    try:
        member.heartbeat(())
        etcd_client(ETCD_URL).delete_prefix(f"/{etcd_prefix}/")  # e.g. an operator cleaned up the keys
        member._lease.revoke()
        assert [m.process for m in member.heartbeat(())] == ["m"]
    finally:
        member.leave()


def test_an_unreachable_etcd_answers_none_and_changes_nothing(etcd_prefix):
    member = Membership(f"http://127.0.0.1:{free_port()}", etcd_prefix, _member("m"), lease_s=5)
    assert member.heartbeat((0,)) is None
    assert member.reachable is False
    assert ClusterMap(f"http://127.0.0.1:{free_port()}", etcd_prefix).members() is None
    member.leave()


def test_a_malformed_entry_is_ignored(etcd_prefix):
    etcd_client(ETCD_URL).put(f"/{etcd_prefix}/members/junk", "not json")
    member = Membership(ETCD_URL, etcd_prefix, _member("m"), lease_s=5)
    try:
        assert [m.process for m in member.heartbeat(())] == ["m"]
    finally:
        member.leave()
