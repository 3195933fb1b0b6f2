"""Proof of reserves: every user's proof verifies against the published root and total; a proof with a changed
balance, a changed sibling (hash or sum) or a negative node fails; `wallet verify-proof` runs in a subprocess
with no database configured; the endpoints refuse bad input with problem details (MariaDB + Redis)."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess

import pytest

from storage.db import database_proxy
from storage.models import ReserveLeaf
from tests.process.support import WALLET, wallet_env
from tests.web.conftest import api  # noqa: F401 - the fixture: the service on MariaDB and Redis
from treasury.merkle import (
    PAD_HASH, MerkleSumTree, ProofError, b64, derive_salt, leaf_hash, node_hash, proof_document, verify_proof,
)
from treasury.reserves import Reserves

SECRET = bytes(range(32))


def tree_of(balances: list[int]) -> MerkleSumTree:
    return MerkleSumTree.build((leaf_hash(i + 1, derive_salt(SECRET, 1, "ETH", i + 1), b), b)
                               for i, b in enumerate(balances))


def doc_of(tree: MerkleSumTree, index: int) -> dict:
    account = index + 1
    return proof_document(tree, index, account_id=account, salt=derive_salt(SECRET, 1, "ETH", account),
                          balance=tree.sums[0][index], asset="ETH", snapshot_id=1, block_number=7)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 33])
def test_every_leaf_of_a_tree_proves_its_balance_in_the_total(size):
    rng = random.Random(size)
    balances = [rng.randrange(0, 10**24) for _ in range(size)]
    tree = tree_of(balances)
    assert tree.total == sum(balances)
    for index in range(size):
        verified = verify_proof(json.loads(json.dumps(doc_of(tree, index))), root=tree.root.hex(), total=sum(balances))
        assert (verified.account_id, verified.balance, verified.total) == (index + 1, balances[index], sum(balances))


def test_a_changed_balance_sibling_or_root_fails():
    tree = tree_of([5, 7, 11, 13, 17])
    good = doc_of(tree, 2)
    cases = []
    changed = copy.deepcopy(good)
    changed["balance"] = "12"  # claims one more
    cases.append((changed, "root"))
    changed = copy.deepcopy(good)
    changed["path"][0][0] = b64(bytes(32))  # another sibling hash
    cases.append((changed, "root"))
    changed = copy.deepcopy(good)
    changed["path"][1][1] = str(int(good["path"][1][1]) - 1)  # a sibling that hides one unit
    cases.append((changed, "root"))
    changed = copy.deepcopy(good)
    changed["salt"] = "00" * 32  # someone else's (or a guessed) salt
    cases.append((changed, "root"))
    changed = copy.deepcopy(good)
    changed["total"] = str(tree.total + 1)
    cases.append((changed, "sums to"))
    for document, reason in cases:
        with pytest.raises(ProofError, match=reason):
            verify_proof(document)
    verify_proof(good)  # the untouched document still verifies
    with pytest.raises(ProofError, match="published root"):
        verify_proof(good, root="ab" * 32)
    with pytest.raises(ProofError, match="published total"):
        verify_proof(good, total=tree.total - 1)


def test_a_negative_node_is_refused_even_when_the_hashes_agree():
    """A dishonest prover who could put a negative sum in a node would cancel other users' balances out of the
    total. Here the proof is built consistently around a -10 sibling (the hashes fold to the root it claims);
    the verifier still refuses it, and so do the encoder and the tree builder."""
    salt = derive_salt(SECRET, 1, "ETH", 1)
    leaf = leaf_hash(1, salt, 10)
    with pytest.raises(ProofError, match="a sum"):
        node_hash(leaf, 10, PAD_HASH, -10)
    forged = {"version": 1, "asset": "ETH", "snapshot_id": 1, "block_number": 1, "root": "00" * 32, "total": "0",
              "leaf_count": 2, "account_id": 1, "salt": salt.hex(), "balance": "10", "index": 0,
              "path": [[b64(PAD_HASH), "-10"]]}
    with pytest.raises(ProofError, match="negative"):
        verify_proof(forged)
    with pytest.raises(ProofError, match="out of range"):
        MerkleSumTree.build([(leaf, 10), (PAD_HASH, -10)])
    with pytest.raises(ProofError, match="negative"):
        verify_proof({**forged, "path": [], "balance": "-1"})


def test_a_malformed_document_is_a_proof_error():
    tree = tree_of([1, 2, 3])
    good = doc_of(tree, 1)
    for broken in ({**good, "version": 2}, {**good, "path": "x"}, {**good, "index": 8}, {**good, "salt": "zz"},
                   {**good, "path": [["short", "1"]] + good["path"][1:]}, {**good, "balance": 5}, []):
        with pytest.raises(ProofError):
            verify_proof(broken)


def test_a_proof_of_a_million_leaves_stays_under_two_kib():
    depth = 20  # 2**20 leaves
    document = {"version": 1, "asset": "ETH", "snapshot_id": 10**6, "block_number": 10**8, "root": "ab" * 32,
                "total": str(10**30), "leaf_count": 2**20, "account_id": 10**7, "salt": "cd" * 32,
                "balance": str(10**24), "index": 2**20 - 1, "path": [[b64(bytes(32)), str(10**28)]] * depth}
    assert len(json.dumps(document, separators=(",", ":"))) <= 2048


# -- over the service ------------------------------------------------------------------------------------------


def snapshot(api) -> dict:  # noqa: F811
    builder = Reserves(database_proxy.obj, api.system.config.key_ring())
    return builder.snapshot("ETH").as_json()


def test_every_users_proof_verifies_against_the_published_root(api, tmp_path):  # noqa: F811
    users = [api.user(f"user{i}", funds=(i + 1) * 10**15) for i in range(5)]
    broke = api.user("broke")
    moved = api.transfer(users[4], "broke", str(10**15))
    assert moved.status_code == 201
    api.wait_balance(broke, (10**15, 0))
    taken = snapshot(api)
    assert taken["total"] == str(sum((i + 1) * 10**15 for i in range(5))) and taken["leaf_count"] == 6
    published = api.client.get("/api/v1/reserves")
    assert published.status_code == 200
    (eth,) = published.json["snapshots"]
    assert (eth["root"], eth["total"], eth["snapshot_id"]) == (taken["root"], taken["total"], taken["snapshot_id"])
    assert published.json["addresses"]["hot"] and published.json["addresses"]["deposit_address_count"] == 6
    page = api.client.get("/api/v1/reserves/deposit-addresses?limit=4")
    rest = api.client.get(f"/api/v1/reserves/deposit-addresses?limit=4&after={page.json['next_after']}")
    assert len(page.json["addresses"]) == 4 and len(rest.json["addresses"]) == 2 and rest.json["next_after"] is None
    salts = set()
    for user in [*users, broke]:
        response = api.client.get("/api/v1/me/reserve-proof?asset=ETH", headers=user.auth)
        assert response.status_code == 200, response.json
        document = response.json
        assert document["account_id"] == user.account_id
        assert int(document["balance"]) == sum(api.balance(user))
        verified = verify_proof(document, root=eth["root"], total=int(eth["total"]))
        assert verified.balance == sum(api.balance(user))
        assert len(json.dumps(document)) < 2048
        salts.add(document["salt"])
        path = tmp_path / f"proof-{user.username}.json"
        path.write_text(json.dumps(document))
    assert len(salts) == 6  # each user sees only their own salt, and no two are alike
    assert verify_cli(path, "--root", eth["root"], "--total", eth["total"]).returncode == 0
    tampered = json.loads(path.read_text())
    tampered["balance"] = str(int(tampered["balance"]) + 1)
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    bad = verify_cli(tmp_path / "tampered.json")
    assert bad.returncode == 1 and "INVALID" in bad.stderr
    assert verify_cli(path, "--root", "00" * 32).returncode == 1
    # a later snapshot gives a new salt to the same user: leaves cannot be linked across snapshots
    again = snapshot(api)
    assert again["root"] != taken["root"] and again["total"] == taken["total"]
    later = api.client.get("/api/v1/me/reserve-proof?asset=ETH", headers=broke.auth).json
    assert later["snapshot_id"] == again["snapshot_id"] and later["salt"] != document["salt"]


def test_a_proof_is_rebuilt_from_the_stored_leaves_and_tampered_leaves_are_caught(api):  # noqa: F811
    alice = api.user("alice", funds=10**18)
    taken = snapshot(api)
    fresh = Reserves(database_proxy.obj, api.system.config.key_ring())  # nothing cached: rebuilt from the rows
    document = fresh.proof("ETH", alice.account_id)
    assert verify_proof(document, root=taken["root"]).balance == 10**18
    ReserveLeaf.update(balance=10**17).where(ReserveLeaf.snapshot_id == taken["snapshot_id"]).execute()
    with pytest.raises(RuntimeError, match="no longer give"):
        Reserves(database_proxy.obj, api.system.config.key_ring()).proof("ETH", alice.account_id)


def test_bad_input_on_the_reserve_endpoints_is_a_4xx_problem(api):  # noqa: F811
    alice = api.user("alice", funds=10)
    no_auth = api.client.get("/api/v1/me/reserve-proof?asset=ETH")
    assert no_auth.status_code == 401 and no_auth.mimetype == "application/problem+json"
    none_yet = api.client.get("/api/v1/me/reserve-proof?asset=ETH", headers=alice.auth)
    assert none_yet.status_code == 404 and none_yet.json["code"] == "no_reserve_proof"
    snapshot(api)
    unknown = api.client.get("/api/v1/me/reserve-proof?asset=DOGE", headers=alice.auth)
    assert unknown.status_code == 400 and unknown.json["code"] == "unknown_asset"
    for query in ("", "?asset=eth!", "?asset=ETH&asset=ETH", "?asset=ETH&x=1"):
        response = api.client.get(f"/api/v1/me/reserve-proof{query}", headers=alice.auth)
        assert response.status_code == 400, (query, response.json)
    newcomer = api.user("newcomer")  # registered after the snapshot: not in it
    assert api.client.get("/api/v1/me/reserve-proof?asset=ETH", headers=newcomer.auth).status_code == 404
    for query in ("?limit=0", "?limit=501", "?after=-1", "?limit=x"):
        assert api.client.get(f"/api/v1/reserves/deposit-addresses{query}").status_code == 400
    no_token = api.client.get("/admin/api/v1/reconciliation")
    assert no_token.status_code == 401
    assert api.client.get("/admin/api/v1/reconciliation", headers=alice.auth).status_code == 401  # a user's token


def verify_cli(path, *args: str) -> subprocess.CompletedProcess:
    """`wallet verify-proof` with no WALLET_* at all: no database, no node, no key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    return subprocess.run([WALLET, "verify-proof", str(path), *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=path.parent)


def test_reserves_snapshot_command_publishes_a_root(api):  # noqa: F811
    api.user("zed", funds=42)
    done = subprocess.run([WALLET, "reserves", "snapshot"], env=wallet_env(api.system.config), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    printed = json.loads(line)
    assert printed["asset"] == "ETH" and printed["total"] == "42"
    assert api.client.get("/api/v1/reserves").json["snapshots"][0]["root"] == printed["root"]
