"""The `wallet` command for operators. Every subcommand reads the WALLET_* environment (see DESIGN.md)."""

from __future__ import annotations

import dataclasses
import json
import sys

import click
import peewee
import pymysql
import redis

from storage.db import connect_database, create_mysql_database, migrate
from storage.admins import CLI, ROLES, NewAdmin, create_admin, reset_totp
from core.config import Config
from core.limits import HTTP_THREADS_DEFAULT, HTTP_THREADS_MAX, STAFF_PASSWORD_MAX_LEN, STAFF_PASSWORD_MIN_LEN
from core.errors import ConfigError, WalletError


def load_config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as exc:
        raise click.ClickException(exc.detail) from None


def open_database(config: Config, create: bool = False):
    if create and not config.is_sqlite:
        create_mysql_database(config.database_url)
    db = connect_database(config.database_url)
    db.connect(reuse_if_open=True)
    return db


@click.group(help="Custodial Ethereum wallet service. Configure with WALLET_* environment variables.")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
def main(log_level: str) -> None:
    from app.logs import setup_logging

    setup_logging(log_level)


@main.command(help="Create or upgrade the schema, create every shard's system accounts, and (with "
                   "--pool N) fill the deposit address pool.")
@click.option("--pool", "pool_size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Generate this many deposit keys if the pool has fewer unassigned.")
def init(pool_size: int) -> None:
    from app.provision import provision

    config = load_config()
    db = open_database(config, create=True)
    ring = config.key_ring() if config.master_key else None
    try:
        done = provision(db, config.shards, pool_size, ring, progress=sys.stderr.isatty())
    except ValueError as exc:
        raise click.ClickException(f"{exc}: set WALLET_MASTER_KEY (64 hex characters)") from None
    except ConfigError as exc:  # e.g. the master key does not open the existing wallet keys
        raise click.ClickException(exc.detail) from None
    click.echo(f"schema ready ({len(done.migrations_applied)} migrations applied); {config.shards} shards have "
               "system accounts")
    if done.keys_generated:
        click.echo(f"generated {done.keys_generated} deposit keys")
    for purpose, address in done.wallet_keys.items():  # addresses only: a key is never shown
        click.echo(f"{purpose} wallet: {address}")
    if ring is None:
        click.echo("no hot or gas wallet yet: run `wallet init` again with WALLET_MASTER_KEY set")


@main.group(help="The pool of pre-generated deposit addresses.")
def pool() -> None:
    pass


@pool.command("generate", help="Generate N encrypted deposit keys (AES-GCM under WALLET_MASTER_KEY).")
@click.argument("count", type=click.IntRange(min=1, max=10_000_000))
def pool_generate(count: int) -> None:
    import time

    from storage.pool import generate_pool

    config = load_config()
    try:
        ring = config.key_ring()
    except ConfigError as exc:
        raise click.ClickException(exc.detail) from None
    db = open_database(config, create=True)
    migrate(db)
    started = time.monotonic()
    generate_pool(db, ring, count, progress=True)
    click.echo(f"generated {count} keys in {time.monotonic() - started:.1f} s")


@pool.command("status", help="Show how many deposit addresses are generated, assigned and left.")
def pool_status() -> None:
    from storage.pool import pool_counts

    config = load_config()
    open_database(config)
    total, assigned = pool_counts()
    remaining = total - assigned
    low = remaining < config.pool_low_watermark
    click.echo(json.dumps({"total": total, "assigned": assigned, "remaining": remaining, "low": low}))


@main.command(help="Run the service: the actor system and the HTTP API in one process, on the database, "
                    "Redis and chain nodes given by WALLET_* (run `wallet init` first). Listens on WALLET_HTTP "
                    "(default 127.0.0.1:8000). SIGTERM or SIGINT: stop accepting, finish requests in flight, "
                    "stop the actors, exit 0; a fatal actor failure exits 1.")
@click.option("--threads", type=click.IntRange(min=1, max=HTTP_THREADS_MAX), default=HTTP_THREADS_DEFAULT,
              show_default=True,
              help="Python threads serving requests (each mostly waits on an actor).")
@click.option("--role", "role", default="all", show_default=True,
              help="'all' (everything in this process) or a comma list of gate, transrv, accountsrv, signsrv, "
                   "blockwatch (cluster mode: needs WALLET_REDIS_URL and MariaDB).")
@click.option("--shards", "host_shards", default="",
              help="For a transrv host: the shards it holds, e.g. 0,1 (default: every shard).")
def serve(threads: int, role: str, host_shards: str) -> None:
    from app.serve import ListenError, serve as run_server
    from core.config import parse_host_shards, parse_roles

    config = load_config()
    try:
        roles = parse_roles(role)
        shards = parse_host_shards(host_shards, config.shards) if host_shards else ()
    except WalletError as exc:
        raise click.ClickException(str(exc)) from None
    if shards and "transrv" not in roles:
        raise click.ClickException("--shards is for a process with the transrv role")
    config = dataclasses.replace(config, roles=roles, host_shards=shards)
    if config.master_key is None:
        raise click.ClickException("WALLET_MASTER_KEY is required (64 hex characters); "
                                   "`wallet demo` runs without one")
    try:
        code = run_server(dataclasses.replace(config, http_threads=threads))
    except (ListenError, WalletError) as exc:  # e.g. the port is taken, another system runs on this database
        raise click.ClickException(str(exc)) from None
    except (peewee.OperationalError, pymysql.MySQLError, redis.RedisError) as exc:
        raise click.ClickException(f"cannot reach the database or Redis: {exc}") from None
    sys.exit(code)


@main.command(help="Run a self-contained demo: a fresh SQLite database under var/, no Redis, an in-process "
                   "Ethereum chain mining a block every few seconds, demo accounts with balances, and the HTTP "
                   "API. Prints the URLs, demo credentials and curl commands to try. With --check, runs the "
                   "same walkthrough against the server over HTTP and exits 0 only if every step behaved.")
@click.option("--check", is_flag=True, help="Run the scripted walkthrough end to end, then shut down.")
@click.option("--block-interval", type=click.FloatRange(min=0.2, max=60), default=2.0, show_default=True,
              help="Seconds between blocks of the in-process chain.")
@click.option("--keep-data", is_flag=True, help="Keep the demo's SQLite file after it stops.")
def demo(check: bool, block_interval: float, keep_data: bool) -> None:
    from app.demo import run_demo
    from app.serve import ListenError

    try:
        code = run_demo(check=check, block_interval_s=block_interval, keep_data=keep_data)
    except ListenError as exc:
        raise click.ClickException(f"{exc}; set WALLET_HTTP=127.0.0.1:<free port>") from None
    sys.exit(code)


@main.group(help="Operator identities (reviewers, operators, auditors) for the admin API and the admin console.")
def admin() -> None:
    pass


@admin.command("create", help="Create an operator NAME with a ROLE and a console password; print its TOTP secret "
                              "and otpauth:// URI (for an authenticator app) and, on the last line, its API token. "
                              "The secrets are shown once, here only: the token is stored as a hash, the TOTP "
                              "secret sealed under WALLET_MASTER_KEY, and neither is ever logged.")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="reviewer: approves or rejects withdrawals; operator: runs the service (pause, holds, flagged "
                   "deposits, treasury); auditor: read-only.")
@click.option("--password-stdin", is_flag=True,
              help="Read the console password from the first line of standard input (scripts) instead of a prompt.")
def admin_create(name: str, role: str, password_stdin: bool) -> None:
    from web.security import hash_secret

    config = load_config()
    ring = _require_key_ring(config)
    password = _read_password(password_stdin)
    db = open_database(config, create=True)
    migrate(db)
    try:
        created = create_admin(name, role, hash_secret(password), ring, by=CLI)
    except WalletError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"created {created.role} {created.name!r} (id {created.id})", err=True)
    click.echo("TOTP secret and URI for the console's second factor, then the API token (shown once; store "
               "them now):", err=True)
    _echo_totp(created)
    click.echo(created.token)


@admin.command("reset-totp", help="Give operator NAME a new TOTP secret (the old one stops working at once) and "
                                  "print it and its otpauth:// URI, once. The password and API token are unchanged.")
@click.argument("name")
def admin_reset_totp(name: str) -> None:

    config = load_config()
    ring = _require_key_ring(config)
    db = open_database(config)
    migrate(db)
    try:
        reset = reset_totp(name, ring, by=CLI)
    except WalletError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"new TOTP secret for {reset.role} {reset.name!r} (shown once; store it now):", err=True)
    _echo_totp(reset)


def _require_key_ring(config: Config):  # noqa: ANN202 - core.keys.KeyRing
    try:
        return config.key_ring()
    except ConfigError as exc:
        raise click.ClickException(f"{exc.detail}: it seals the console's TOTP secrets") from None


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("console password", hide_input=True, confirmation_prompt=True, err=True)
    if not STAFF_PASSWORD_MIN_LEN <= len(password) <= STAFF_PASSWORD_MAX_LEN:
        raise click.ClickException(f"a console password is {STAFF_PASSWORD_MIN_LEN}-{STAFF_PASSWORD_MAX_LEN} "
                                   "characters")
    return password


def _echo_totp(admin: NewAdmin) -> None:
    click.echo(f"totp_secret: {admin.totp_secret}")
    click.echo(admin.totp_uri)


@main.group(help="The master keys that seal every private key (envelope encryption, core/keys.py).")
def keys() -> None:
    pass


@keys.command("rotate", help="Re-wrap every data key (deposit pool, hot and gas wallets) that is not under the "
                             "current master key (WALLET_MASTER_KEY, the highest version), in transactions of "
                             "1,000 keys; the key ciphertexts stay as they are (legacy single-layer pool rows "
                             "become envelopes). Re-encrypt every other secret under it: staff TOTP secrets, "
                             "users' TOTP factors, webhook signing secrets (sealing any still in plaintext). "
                             "Online: the running service opens both versions meanwhile. "
                             "Idempotent. Retired keys (WALLET_MASTER_KEYS_RETIRED) are needed until it is done.")
def keys_rotate() -> None:
    from cryptography.exceptions import InvalidTag
    from tqdm import tqdm

    from storage.rotation import key_versions, rotate_keys

    config = load_config()
    try:
        ring = config.key_ring()
    except ConfigError as exc:
        raise click.ClickException(exc.detail) from None
    db = open_database(config)
    migrate(db)
    pending = key_versions(ring).pending
    with tqdm(total=pending, unit="key", desc="keys rotate", disable=not pending) as bar:
        try:
            report = rotate_keys(db, ring, on_progress=bar.update)
        except ConfigError as exc:
            raise click.ClickException(exc.detail) from None
        except InvalidTag:
            raise click.ClickException("a key did not open (changed or moved row?); the chunks committed so far "
                                       "are kept: run `wallet keys status` and `wallet keys rotate` again") from None
    after = key_versions(ring)
    click.echo(json.dumps({"master_version": report.master_version, "pool_rewrapped": report.pool_rewrapped,
                           "pool_converted": report.pool_converted, "wallet_rewrapped": report.wallet_rewrapped,
                           "secrets_reencrypted": report.secrets, "skipped": report.skipped,
                           "pending": after.pending}))
    if after.pending:
        sys.exit(1)  # e.g. keys written under an old version by a process not restarted yet: run it again


@keys.command("status", help="How many keys and secrets of each kind are under each master key version; a "
                             "retired key may be dropped "
                             "once nothing is under its version (pending 0 after `wallet keys rotate`).")
def keys_status() -> None:
    from storage.rotation import key_versions

    config = load_config()
    try:
        ring = config.key_ring()
    except ConfigError as exc:
        raise click.ClickException(exc.detail) from None
    open_database(config)
    found = key_versions(ring)
    click.echo(json.dumps({"master_version": found.current_version, "ring_versions": list(ring.versions),
                           "pool": {("legacy" if v is None else str(v)): n for v, n in sorted(
                               found.pool.items(), key=lambda item: -1 if item[0] is None else item[0])},
                           "wallet": {str(v): n for v, n in sorted(found.wallet.items())},
                           "secrets": {kind: {("plaintext" if v is None else str(v)): n for v, n in sorted(
                               by_version.items(), key=lambda item: -1 if item[0] is None else item[0])}
                               for kind, by_version in found.secrets.items()},
                           "pending": found.pending,
                           "missing_from_ring": sorted(found.versions_in_use() - set(ring.versions))}))


@main.group(help="Webhook endpoints: every event (deposits, withdrawals) is POSTed to each, signed with its secret "
                  "(header Wallet-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of '<t>.' + body>), retried with "
                  "backoff for three days, in order per account.")
def webhooks() -> None:
    pass


@webhooks.command("add", help="Add an endpoint URL; prints its id and signing secret (the secret on the last line), "
                               "the only time it is shown: it is stored sealed under WALLET_MASTER_KEY.")
@click.argument("url")
@click.option("--secret", help="Use this signing secret instead of a generated one.")
def webhooks_add(url: str, secret: str | None) -> None:
    from storage.webhooks import add_endpoint

    config = load_config()
    try:
        ring = config.key_ring()  # the secret is sealed under it
    except ConfigError as exc:
        raise click.ClickException(exc.detail) from None
    db = open_database(config, create=True)
    migrate(db)
    try:
        endpoint_id, used = add_endpoint(url, ring, secret)
    except WalletError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"webhook endpoint {endpoint_id}: {url} (receives events recorded from now on)", err=True)
    click.echo("signing secret:", err=True)
    click.echo(used)


@webhooks.command("list", help="The endpoints with their delivery counts, as JSON lines.")
def webhooks_list() -> None:
    from storage.webhooks import list_endpoints

    open_database(load_config())
    for endpoint in list_endpoints():
        click.echo(json.dumps(dataclasses.asdict(endpoint)))


@webhooks.command("disable", help="Stop sending to endpoint ID (its pending deliveries stay in the log).")
@click.argument("endpoint_id", type=int)
def webhooks_disable(endpoint_id: int) -> None:
    from storage.webhooks import disable_endpoint

    open_database(load_config())
    if not disable_endpoint(endpoint_id):
        raise click.ClickException(f"no active endpoint {endpoint_id}")
    click.echo(f"endpoint {endpoint_id} disabled")


@webhooks.command("deliveries", help="The delivery log, newest first, as JSON lines.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--endpoint", "endpoint_id", type=int, help="Only this endpoint's deliveries.")
@click.option("--status", type=click.Choice(["pending", "delivered", "abandoned"]))
def webhooks_deliveries(limit: int, endpoint_id: int | None, status: str | None) -> None:
    from storage.webhooks import delivery_log

    open_database(load_config())
    for delivery in delivery_log(limit, endpoint_id, status):
        click.echo(json.dumps(dataclasses.asdict(delivery)))


@main.command(help="Check every ledger invariant; exit 1 on any violation.")
def audit() -> None:
    from app.audit import run_audit

    config = load_config()
    open_database(config)
    report = run_audit()
    for violation in report.violations:
        click.echo(f"VIOLATION: {violation}", err=True)
    click.echo(json.dumps({"ok": report.ok, "violations": len(report.violations), "accounts": report.accounts,
                           "operations": report.operations, "postings": report.postings}))
    if not report.ok:
        sys.exit(1)


@main.command(help="Compare, per asset, what the ledger owes with what our addresses hold on chain at one block "
                   "height (BlockWatch's cursor); print the table; exit 1 on any drift.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def reconcile(as_json: bool) -> None:
    from tabulate import tabulate

    from chain.errors import ChainError
    from chain.nodes import ChainClient
    from treasury.reconcile import TABLE_HEADERS, format_table, reconciler_for

    config = load_config()
    if not config.rpc_urls:
        raise click.ClickException("reconciliation reads the chain: set WALLET_RPC_URLS")
    db = open_database(config)
    chain = ChainClient(config.rpc_urls, expected_chain_id=config.chain_id)
    try:
        chain.start()
        report = reconciler_for(config, db).run(chain.session(), trigger="cli")
    except (ChainError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        chain.close()
    if as_json:
        click.echo(json.dumps(report.as_json()))
    else:
        click.echo(f"block {report.block_number} {report.block_hash} ({report.addresses} addresses read; base units)")
        click.echo(tabulate(format_table(report), headers=TABLE_HEADERS, disable_numparse=True))
        click.echo("clean" if report.clean else "DRIFT: holdings differ from what the ledger explains")
    if not report.clean:
        sys.exit(1)


@main.group(help="Proof of reserves: Merkle-sum snapshots of users' balances.")
def reserves() -> None:
    pass


@reserves.command("snapshot", help="Build and publish a snapshot of every asset (or --asset), print root and total.")
@click.option("--asset", "only", help="Only this asset.")
def reserves_snapshot(only: str | None) -> None:
    from core.money import AssetRegistry
    from treasury.reserves import Reserves

    config = load_config()
    db = open_database(config)
    builder = Reserves(db, _require_key_ring(config))
    assets = AssetRegistry.from_config(config)
    try:
        symbols = [assets.get(only).symbol] if only else list(assets.symbols)
    except WalletError as exc:
        raise click.ClickException(exc.detail) from None
    for symbol in symbols:
        click.echo(json.dumps(builder.snapshot(symbol).as_json()))


@main.command("verify-proof", help="Verify a proof-of-reserves document (GET /api/v1/me/reserve-proof) offline: "
                                   "no database, no network. Exit 1 if it does not verify.")
@click.argument("file", type=click.File("r"))
@click.option("--root", help="The published root (hex) the proof must lead to.")
@click.option("--total", type=click.IntRange(min=0), help="The published total the proof must sum to.")
def verify_proof(file, root: str | None, total: int | None) -> None:  # noqa: ANN001 - click's file
    from treasury.merkle import ProofError
    from treasury.merkle import verify_proof as verify

    try:
        document = json.load(file)
    except ValueError as exc:
        click.echo(f"INVALID: not JSON: {exc}", err=True)
        sys.exit(1)
    try:
        verified = verify(document, root=root, total=total)
    except ProofError as exc:
        click.echo(f"INVALID: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps({"ok": True, "asset": verified.asset, "account_id": verified.account_id,
                           "balance": str(verified.balance), "root": verified.root, "total": str(verified.total)}))


if __name__ == "__main__":
    main()
