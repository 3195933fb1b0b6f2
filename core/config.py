"""Configuration from the environment, one prefix (`WALLET_`).

Tests build a `Config` directly (or with `Config.from_env(overrides)`), never by mutating os.environ.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlparse

from eth_utils import is_checksum_address

from core.errors import ConfigError
from core.keys import KeyRing
from core.limits import (
    AMOUNT_DIGITS_MAX, ASK_TIMEOUT_S_DEFAULT, CONFIRMATIONS_MAX, GAS_PRICE_CAP_GWEI_DEFAULT, HTTP_IDLE_TIMEOUT_S_DEFAULT,
    HTTP_IDLE_TIMEOUT_S_MAX, HTTP_THREADS_DEFAULT, IDEMPOTENCY_RETENTION_S_DEFAULT, RATE_LIMIT_COUNT_MAX,
    RATE_LIMIT_WINDOW_S_MAX, RECONCILE_INTERVAL_MS_DEFAULT, REPLACE_AFTER_MS_DEFAULT, SHARDS_MAX, SHARD_BATCH_MAX, SIGNER_TICK_MS,
)
from core.limits import ETCD_LEASE_S_DEFAULT, ETCD_LEASE_S_MAX, ETCD_LEASE_S_MIN, MASTER_KEY_VERSION_MAX, MASTER_KEYS_RETIRED_MAX

DEFAULT_DB_PATH = Path("var") / "wallet.sqlite3"

# The abuse limits of the HTTP front (web/security.py `Limits`, which asserts it has exactly these), each
# overridable by WALLET_RATE_LIMITS. Bounds of an override: a count of at most 10**9 in a window of at most
# a week (Redis keys of the counters expire with the window).
RATE_LIMIT_NAMES = ("login:account", "login:ip", "login:device", "pay:account", "pay:ip", "register:ip",
                    "refused:account", "password:account", "password:ip", "recovery:account", "recovery:ip",
                    "totp:account")
_RATE_LIMIT_RE = re.compile(r"^(.+):([0-9]{1,12})/([0-9]{1,12})$")


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    symbol: str
    contract: str  # EIP-55 checksummed
    decimals: int


@dataclasses.dataclass(frozen=True)
class Config:
    database_url: str = f"sqlite:///{DEFAULT_DB_PATH}"
    redis_url: str | None = None
    rpc_urls: tuple[str, ...] = ()
    confirmations: int = 6
    shards: int = 4
    master_key: bytes | None = dataclasses.field(default=None, repr=False)  # never in a log line
    # The master key's version (WALLET_MASTER_KEY=N:hex) and the retired ones still readable during a rotation
    # (WALLET_MASTER_KEYS_RETIRED), as (version, key); `key_ring()` holds them all.
    master_key_version: int = 1
    retired_master_keys: tuple[tuple[int, bytes], ...] = dataclasses.field(default=(), repr=False)
    tokens: tuple[TokenConfig, ...] = ()
    http: str = "127.0.0.1:8000"
    ops_http: str = "127.0.0.1:8001"  # the operations listener: /healthz, /readyz, /metrics
    start_block: int | None = None
    chain_id: int | None = None
    # Operational knobs with safe defaults (not in the design table, but bounded like everything else).
    redis_prefix: str = "wallet"
    # Cluster mode (`wallet serve --role ... --shards ...`): the roles this process plays ("all": every actor
    # and the HTTP API in one process, no transport) and, for a transrv host, the shards it hosts (empty: all).
    roles: tuple[str, ...] = ("all",)
    host_shards: tuple[int, ...] = ()
    # Membership (DESIGN.md "Cluster mode"): with an etcd URL, cluster processes register under a lease that
    # lapses etcd_lease_s after a process stops renewing it, and transrv hosts share the shards between
    # them; without one, each transrv host hosts the shards of its --shards (all by default).
    etcd_url: str | None = None
    etcd_prefix: str = "wallet"
    etcd_lease_s: int = ETCD_LEASE_S_DEFAULT
    pool_low_watermark: int = 100
    shard_batch_max: int = SHARD_BATCH_MAX
    ask_timeout_s: float = ASK_TIMEOUT_S_DEFAULT
    http_threads: int = HTTP_THREADS_DEFAULT  # `wallet serve --threads`; sizes the database pool too
    session_ttl_s: int = 3600
    scan_lag_max_blocks: int = 50
    min_deposits: tuple[tuple[str, int], ...] = ()  # (asset, base units): smaller deposits are never credited
    chain_poll_s: float = 0.1  # BlockWatch's pause between polls of the node's head once caught up
    scan_batch_blocks: int = 100  # blocks read per scan step
    chain_node_cooldown_s: float = 10.0  # a node that failed a read is not used again before this
    chain_health_timeout_s: float = 2.0  # a node's head check; one miss is forgiven if it served reads lately
    # The front's edge: reverse-proxy hops whose X-Forwarded-For is trusted (0: none, the peer is the client),
    # overrides of the abuse limits as (name, count, window seconds), and how long a refused request's
    # Idempotency-Key keeps its answer.
    trusted_proxies: int = 0
    rate_limits: tuple[tuple[str, int, int], ...] = ()
    idempotency_retention_s: int = IDEMPOTENCY_RETENTION_S_DEFAULT
    # Withdrawals (DESIGN.md "Withdrawals"), per asset in base units: the smallest request, the rolling 24 h
    # limit per account, automatic approval below an amount (default: never), two reviewers above an amount
    # (default: never), and the flat fee charged for a token withdrawal (ETH's fee comes from the node).
    withdraw_min: tuple[tuple[str, int], ...] = ()
    withdraw_daily_limit: tuple[tuple[str, int], ...] = ()
    withdraw_auto_approve_below: tuple[tuple[str, int], ...] = ()
    withdraw_four_eyes_above: tuple[tuple[str, int], ...] = ()
    withdraw_token_fees: tuple[tuple[str, int], ...] = ()
    gas_price_cap_gwei: int = GAS_PRICE_CAP_GWEI_DEFAULT  # the highest maxFeePerGas the signer ever signs
    replace_after_ms: int = REPLACE_AFTER_MS_DEFAULT  # no receipt this long after the last attempt: replace
    signer_tick_ms: int = SIGNER_TICK_MS  # the signer looks for work this often (tests drive it by hand)
    # Treasury (DESIGN.md "Treasury"), per asset in base units: a deposit address holding at least sweep_min is
    # swept into the hot wallet (an asset not named is never swept); above hot_cap the hot wallet's surplus down
    # to hot_target goes to cold_address (no key on the server); below hot_low an alert asks for a refill.
    sweep_min: tuple[tuple[str, int], ...] = ()
    hot_cap: tuple[tuple[str, int], ...] = ()
    hot_target: tuple[tuple[str, int], ...] = ()
    hot_low: tuple[tuple[str, int], ...] = ()
    cold_address: str | None = None
    sweep_gas_price_cap_gwei: int | None = None  # custody moves wait for cheaper gas than withdrawals (default: the same cap)
    # A connection that sends no complete request head for this long is closed (idle keep-alive included).
    http_idle_timeout_s: int = HTTP_IDLE_TIMEOUT_S_DEFAULT
    # Reconciliation: how often it runs, and per asset the operator's own float on our addresses (funds nobody
    # is owed: the hot wallet's gas money put in from outside), expected on top of what the ledger owes.
    reconcile_interval_ms: int = RECONCILE_INTERVAL_MS_DEFAULT
    reconcile_float: tuple[tuple[str, int], ...] = ()
    embedded: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def http_host_port(self) -> tuple[str, int]:
        return _host_port(self.http)

    @property
    def ops_host_port(self) -> tuple[str, int]:
        return _host_port(self.ops_http)

    def require_master_key(self) -> bytes:
        if self.master_key is None:
            raise ConfigError("WALLET_MASTER_KEY is required (64 hex characters)")
        return self.master_key

    def key_ring(self) -> KeyRing:
        """The master keys by version: the current one (new envelopes) and the retired ones (still opened)."""
        key = self.require_master_key()
        retired = dict(self.retired_master_keys)
        if len(retired) != len(self.retired_master_keys):
            raise ConfigError("WALLET_MASTER_KEYS_RETIRED names a version twice")
        if any(version >= self.master_key_version for version in retired):
            raise ConfigError(f"WALLET_MASTER_KEYS_RETIRED versions must be below the current master key's "
                              f"version {self.master_key_version} (versions only go up)")
        try:
            return KeyRing({**retired, self.master_key_version: key}, current=self.master_key_version)
        except ValueError as exc:
            raise ConfigError(f"master keys: {exc}") from None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Config:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        if "WALLET_DATABASE_URL" in env:
            values["database_url"] = env["WALLET_DATABASE_URL"]
        if env.get("WALLET_REDIS_URL"):
            values["redis_url"] = env["WALLET_REDIS_URL"]
        if env.get("WALLET_REDIS_PREFIX"):
            values["redis_prefix"] = env["WALLET_REDIS_PREFIX"]
        if env.get("WALLET_ETCD_URL"):
            values["etcd_url"] = parse_etcd_url(env["WALLET_ETCD_URL"])
        if env.get("WALLET_ETCD_PREFIX"):
            values["etcd_prefix"] = env["WALLET_ETCD_PREFIX"]
        if env.get("WALLET_ETCD_LEASE_S"):
            values["etcd_lease_s"] = _positive_int("WALLET_ETCD_LEASE_S", env["WALLET_ETCD_LEASE_S"])
            if not ETCD_LEASE_S_MIN <= values["etcd_lease_s"] <= ETCD_LEASE_S_MAX:
                raise ConfigError(f"WALLET_ETCD_LEASE_S must be between {ETCD_LEASE_S_MIN} and {ETCD_LEASE_S_MAX}")
        if env.get("WALLET_RPC_URLS"):
            values["rpc_urls"] = tuple(u.strip() for u in env["WALLET_RPC_URLS"].split(",") if u.strip())
        for name, key in (("confirmations", "WALLET_CONFIRMATIONS"), ("shards", "WALLET_SHARDS"),
                          ("start_block", "WALLET_START_BLOCK"), ("chain_id", "WALLET_CHAIN_ID")):
            if env.get(key):
                values[name] = _positive_int(key, env[key], allow_zero=(name == "start_block"))
        if env.get("WALLET_MASTER_KEY"):
            values["master_key_version"], values["master_key"] = parse_versioned_master_key(env["WALLET_MASTER_KEY"])
        if env.get("WALLET_MASTER_KEYS_RETIRED"):
            values["retired_master_keys"] = parse_retired_master_keys(env["WALLET_MASTER_KEYS_RETIRED"])
        if env.get("WALLET_TOKENS"):
            values["tokens"] = parse_tokens(env["WALLET_TOKENS"])
        if env.get("WALLET_HTTP"):
            values["http"] = env["WALLET_HTTP"]
        if env.get("WALLET_OPS_HTTP"):
            values["ops_http"] = env["WALLET_OPS_HTTP"]
        if env.get("WALLET_HTTP_IDLE_TIMEOUT_S"):
            values["http_idle_timeout_s"] = _positive_int("WALLET_HTTP_IDLE_TIMEOUT_S", env["WALLET_HTTP_IDLE_TIMEOUT_S"])
        if env.get("WALLET_MIN_DEPOSITS"):
            values["min_deposits"] = parse_min_deposits(env["WALLET_MIN_DEPOSITS"])
        if env.get("WALLET_CHAIN_POLL_S"):
            values["chain_poll_s"] = _positive_float("WALLET_CHAIN_POLL_S", env["WALLET_CHAIN_POLL_S"])
        if env.get("WALLET_CHAIN_HEALTH_TIMEOUT_S"):
            values["chain_health_timeout_s"] = _positive_float("WALLET_CHAIN_HEALTH_TIMEOUT_S",
                                                               env["WALLET_CHAIN_HEALTH_TIMEOUT_S"])
        if env.get("WALLET_SCAN_BATCH_BLOCKS"):
            values["scan_batch_blocks"] = _positive_int("WALLET_SCAN_BATCH_BLOCKS", env["WALLET_SCAN_BATCH_BLOCKS"])
        if env.get("WALLET_TRUSTED_PROXIES"):
            values["trusted_proxies"] = _positive_int("WALLET_TRUSTED_PROXIES", env["WALLET_TRUSTED_PROXIES"],
                                                      allow_zero=True)
        if env.get("WALLET_RATE_LIMITS"):
            values["rate_limits"] = parse_rate_limits(env["WALLET_RATE_LIMITS"])
        if env.get("WALLET_IDEMPOTENCY_RETENTION_S"):
            values["idempotency_retention_s"] = _positive_int("WALLET_IDEMPOTENCY_RETENTION_S",
                                                              env["WALLET_IDEMPOTENCY_RETENTION_S"])
        for name in ("withdraw_min", "withdraw_daily_limit", "withdraw_auto_approve_below", "withdraw_four_eyes_above",
                     "withdraw_token_fees", "sweep_min", "hot_cap", "hot_target", "hot_low"):
            key = "WALLET_" + name.upper()
            if env.get(key):
                values[name] = parse_asset_amounts(key, env[key])
        if env.get("WALLET_GAS_PRICE_CAP_GWEI"):
            values["gas_price_cap_gwei"] = _positive_int("WALLET_GAS_PRICE_CAP_GWEI", env["WALLET_GAS_PRICE_CAP_GWEI"])
        if env.get("WALLET_SIGNER_TICK_MS"):
            values["signer_tick_ms"] = _positive_int("WALLET_SIGNER_TICK_MS", env["WALLET_SIGNER_TICK_MS"])
        if env.get("WALLET_REPLACE_AFTER_S"):
            values["replace_after_ms"] = 1000 * _positive_int("WALLET_REPLACE_AFTER_S", env["WALLET_REPLACE_AFTER_S"])
        if env.get("WALLET_RECONCILE_INTERVAL_MS"):
            values["reconcile_interval_ms"] = _positive_int("WALLET_RECONCILE_INTERVAL_MS",
                                                            env["WALLET_RECONCILE_INTERVAL_MS"])
        if env.get("WALLET_RECONCILE_FLOAT"):
            values["reconcile_float"] = parse_asset_amounts("WALLET_RECONCILE_FLOAT", env["WALLET_RECONCILE_FLOAT"])
        if env.get("WALLET_SWEEP_GAS_PRICE_CAP_GWEI"):
            values["sweep_gas_price_cap_gwei"] = _positive_int("WALLET_SWEEP_GAS_PRICE_CAP_GWEI",
                                                               env["WALLET_SWEEP_GAS_PRICE_CAP_GWEI"])
        if env.get("WALLET_COLD_ADDRESS"):
            values["cold_address"] = env["WALLET_COLD_ADDRESS"].strip()  # checked in check_bounds
        values.update(overrides)
        config = cls(**values)  # type: ignore[arg-type]
        config.check_bounds()
        if config.master_key is not None:
            config.key_ring()  # a ring that cannot be built stops the start here, naming the variable
        elif config.retired_master_keys:
            raise ConfigError("WALLET_MASTER_KEYS_RETIRED is set but WALLET_MASTER_KEY is not")
        return config

    def check_bounds(self) -> None:
        """Values the limits in core/limits.py are sized for."""
        if not 1 <= self.confirmations <= CONFIRMATIONS_MAX:
            raise ConfigError(f"WALLET_CONFIRMATIONS must be 1..{CONFIRMATIONS_MAX}, got {self.confirmations}")
        if not 1 <= self.shards <= SHARDS_MAX:
            raise ConfigError(f"WALLET_SHARDS must be 1..{SHARDS_MAX}, got {self.shards}")
        if not 1 <= self.http_idle_timeout_s <= HTTP_IDLE_TIMEOUT_S_MAX:
            raise ConfigError(f"WALLET_HTTP_IDLE_TIMEOUT_S must be 1..{HTTP_IDLE_TIMEOUT_S_MAX}, "
                              f"got {self.http_idle_timeout_s}")
        for key, value in (("WALLET_HTTP", self.http), ("WALLET_OPS_HTTP", self.ops_http)):
            try:
                _host_port(value)
            except ValueError:
                raise ConfigError(f"{key} must be host:port, got {value!r}") from None
        if self.ops_host_port == self.http_host_port and self.http_host_port[1] != 0:
            raise ConfigError("WALLET_OPS_HTTP must differ from WALLET_HTTP: the operations endpoints are not public")

        self.check_treasury()

    def check_treasury(self) -> None:
        """A cold address must be an EIP-55 checksummed address (a typo must not send the surplus away); a target
        sits at or below its cap, and a cap needs a cold address to send to."""
        if self.cold_address is not None and not is_checksum_address(self.cold_address):
            raise ConfigError(f"WALLET_COLD_ADDRESS must be an EIP-55 checksummed address, got {self.cold_address!r}")
        caps, targets = self.per_asset("hot_cap"), self.per_asset("hot_target")
        if caps and self.cold_address is None:
            raise ConfigError("WALLET_HOT_CAP is set but WALLET_COLD_ADDRESS is not: the surplus has nowhere to go")
        for symbol, target in targets.items():
            if symbol not in caps:
                raise ConfigError(f"WALLET_HOT_TARGET names {symbol}, which has no WALLET_HOT_CAP")
            if target > caps[symbol]:
                raise ConfigError(f"WALLET_HOT_TARGET of {symbol} ({target}) is above its WALLET_HOT_CAP "
                                  f"({caps[symbol]})")

    def per_asset(self, field: str) -> dict[str, int]:
        """One of the per-asset settings (withdraw_min, ...) as {symbol: base units}."""
        return dict(getattr(self, field))

    @property
    def gas_price_cap_wei(self) -> int:
        return self.gas_price_cap_gwei * 10**9

    @property
    def sweep_gas_price_cap_wei(self) -> int:
        """The highest maxFeePerGas of a sweep or cold move: never above the signer's own cap."""
        cap = self.gas_price_cap_gwei if self.sweep_gas_price_cap_gwei is None else self.sweep_gas_price_cap_gwei
        return min(cap, self.gas_price_cap_gwei) * 10**9

    def with_demo_defaults(self) -> Config:
        """Embedded mode: generate a throwaway master key if none was given."""
        key = self.master_key or secrets.token_bytes(32)
        return dataclasses.replace(self, master_key=key, embedded=True)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    number = int(port)
    if not 0 <= number < 65536:
        raise ValueError(address)
    return host or "127.0.0.1", number


def _positive_int(key: str, raw: str, allow_zero: bool = False) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'0 or more' if allow_zero else 'positive'}, got {value}")
    return value


def _positive_float(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{key} must be positive, got {raw!r}")
    return value


def parse_asset_amounts(key: str, raw: str) -> tuple[tuple[str, int], ...]:
    """`ETH:1000,TKN:1`: per asset symbol, an amount in base units (each symbol once)."""
    amounts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        symbol, _, amount = item.partition(":")
        if not symbol.isalnum() or not amount.isdigit() or len(amount) > AMOUNT_DIGITS_MAX:
            raise ConfigError(f"{key} entry {item!r} must be SYMBOL:base_units")
        if symbol.upper() in amounts:
            raise ConfigError(f"{key} names {symbol.upper()} twice")
        amounts[symbol.upper()] = int(amount)
    return tuple(amounts.items())


def parse_min_deposits(raw: str) -> tuple[tuple[str, int], ...]:
    """`ETH:1000,TKN:1`: per asset, the smallest deposit (base units) that is credited."""
    minimums = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        symbol, _, amount = item.partition(":")
        if not symbol.isalnum() or not amount.isdigit():
            raise ConfigError(f"WALLET_MIN_DEPOSITS entry {item!r} must be SYMBOL:base_units")
        minimums.append((symbol.upper(), int(amount)))
    return tuple(minimums)


def parse_rate_limits(raw: str) -> tuple[tuple[str, int, int], ...]:
    """`register:ip:1000/900,login:ip:50/600`: per limit name, the count allowed per window of seconds."""
    limits: dict[str, tuple[str, int, int]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        match = _RATE_LIMIT_RE.match(item)
        if match is None:
            raise ConfigError(f"WALLET_RATE_LIMITS entry {item!r} must be name:count/seconds "
                              "(e.g. register:ip:1000/900)")
        name, count, seconds = match.groups()
        if name not in RATE_LIMIT_NAMES:
            raise ConfigError(f"WALLET_RATE_LIMITS entry {item!r} names an unknown limit {name!r}; "
                              f"known: {', '.join(RATE_LIMIT_NAMES)}")
        if name in limits:
            raise ConfigError(f"WALLET_RATE_LIMITS entry {item!r} repeats the limit {name!r}")
        if not 1 <= int(count) <= RATE_LIMIT_COUNT_MAX:
            raise ConfigError(f"WALLET_RATE_LIMITS entry {item!r}: count must be 1-{RATE_LIMIT_COUNT_MAX}")
        if not 1 <= int(seconds) <= RATE_LIMIT_WINDOW_S_MAX:
            raise ConfigError(f"WALLET_RATE_LIMITS entry {item!r}: seconds must be 1-{RATE_LIMIT_WINDOW_S_MAX}")
        limits[name] = (name, int(count), int(seconds))
    return tuple(limits.values())


def parse_master_key(raw: str) -> bytes:
    raw = raw.strip()
    if len(raw) != 64:
        raise ConfigError("WALLET_MASTER_KEY must be 64 hex characters (32 bytes)")
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise ConfigError("WALLET_MASTER_KEY must be hexadecimal") from None


def parse_versioned_master_key(raw: str, name: str = "WALLET_MASTER_KEY",
                               version_required: bool = False) -> tuple[int, bytes]:
    """`64hex` (version 1) or `N:64hex` (version N) -> (version, key). Messages never show the key."""
    version_text, sep, key_text = raw.strip().rpartition(":")
    if not sep and version_required:
        raise ConfigError(f"{name} must be N:64hex (a retired key needs its version)")
    version = 1
    if sep:
        if not version_text.isdigit() or not 1 <= int(version_text) <= MASTER_KEY_VERSION_MAX:
            raise ConfigError(f"{name}: the version before ':' must be 1-{MASTER_KEY_VERSION_MAX}")
        version = int(version_text)
    try:
        return version, parse_master_key(key_text)
    except ConfigError as exc:
        raise ConfigError(exc.detail.replace("WALLET_MASTER_KEY", name, 1)) from None


def parse_retired_master_keys(raw: str) -> tuple[tuple[int, bytes], ...]:
    """`N:64hex,M:64hex`: master keys of earlier versions, still opened until `wallet keys rotate` is done."""
    keys: dict[int, bytes] = {}
    for position, item in enumerate(filter(None, (part.strip() for part in raw.split(","))), start=1):
        version, key = parse_versioned_master_key(item, f"WALLET_MASTER_KEYS_RETIRED entry {position}",
                                                  version_required=True)
        if version in keys:
            raise ConfigError(f"WALLET_MASTER_KEYS_RETIRED names version {version} twice")
        keys[version] = key
    if len(keys) > MASTER_KEYS_RETIRED_MAX:
        raise ConfigError(f"WALLET_MASTER_KEYS_RETIRED holds at most {MASTER_KEYS_RETIRED_MAX} keys")
    return tuple(sorted(keys.items()))


def parse_tokens(raw: str) -> tuple[TokenConfig, ...]:
    from eth_utils import is_checksum_address

    tokens = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            symbol, contract, decimals = item.split(":")
            dec = int(decimals)
        except ValueError:
            raise ConfigError(f"WALLET_TOKENS entry {item!r} must be SYMBOL:0xContract:decimals") from None
        if not is_checksum_address(contract):
            raise ConfigError(f"WALLET_TOKENS contract {contract!r} is not an EIP-55 address")
        if not (0 <= dec <= 36) or not symbol.isalnum() or symbol.upper() == "ETH":
            raise ConfigError(f"WALLET_TOKENS entry {item!r} has a bad symbol or decimals")
        tokens.append(TokenConfig(symbol.upper(), contract, dec))
    return tuple(tokens)


ROLES = ("gate", "transrv", "accountsrv", "signsrv", "blockwatch")


def parse_roles(raw: str) -> tuple[str, ...]:
    """`--role all` or a comma list of ROLES (DESIGN.md "Cluster mode")."""
    roles = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if roles == ("all",):
        return roles
    unknown = [role for role in roles if role not in ROLES]
    if not roles or unknown:
        raise ConfigError(f"--role: 'all' or a comma list of {', '.join(ROLES)}; not {', '.join(unknown) or raw!r}")
    return roles


def parse_etcd_url(raw: str) -> str:
    """`http://host:port` of an etcd member's client URL (its JSON gateway, etcd 3.4+)."""
    parsed = urlparse(raw.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path not in ("", "/"):
        raise ConfigError(f"WALLET_ETCD_URL must look like http://127.0.0.1:2379, not {raw!r}")
    try:
        parsed.port
    except ValueError:
        raise ConfigError(f"WALLET_ETCD_URL has a bad port: {raw!r}") from None
    return raw.strip().rstrip("/")


def parse_host_shards(raw: str, shard_count: int) -> tuple[int, ...]:
    """`--shards 0,1`: the shards a transrv host holds (each below WALLET_SHARDS)."""
    try:
        shards = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--shards: a comma list of shard numbers, not {raw!r}") from None
    if not shards or any(not 0 <= s < shard_count for s in shards):
        raise ConfigError(f"--shards: numbers from 0 to {shard_count - 1} (WALLET_SHARDS), not {raw!r}")
    return shards
