"""Every bound of the service in one place, with the relations between them asserted at import.

TigerBeetle's habit (`constants.zig`): a limit that depends on another is checked where both are visible,
so changing one cannot silently break the other. Names say units last (`_ms`, `_s`, `_bytes`, `_max`).
Time bounds of the ledger and the front are integer milliseconds (logic that takes a clock takes ms).
"""

from __future__ import annotations

# -- money ---------------------------------------------------------------------------------------------
# Columns are DECIMAL(65,0): anything at or above 10**65 does not fit, so no amount or balance may reach it.
AMOUNT_DIGITS_MAX = 65
AMOUNT_LIMIT = 10**AMOUNT_DIGITS_MAX

# -- operation ids -------------------------------------------------------------------------------------
OP_ID_COLUMN_LEN = 100  # operation.op_id, posting.op_id, outbox.op_id
CREDIT_OP_PREFIX = "x:"  # the outbox derives the credit half's id from the transfer's
BOUNCE_OP_PREFIX = "r:"  # a credit refused for good comes back to the sender under this id
OP_ID_MAX_LEN = 90  # what a shard accepts from a caller; derived ids add a prefix
IDEMPOTENCY_KEY_MAX_LEN = 128
FRONT_OP_ID_MAX_LEN = 2 + 20 + 1 + 40 + 1  # "<prefix>:<account id>:<40 hex of sha256(key)>"
CHAIN_ID_DIGITS_MAX = 10  # chain ids in use are far below 10**10
LOG_INDEX_DIGITS_MAX = 6
DEPOSIT_OP_ID_MAX_LEN = len("d:") + CHAIN_ID_DIGITS_MAX + 1 + 66 + 1 + 1 + LOG_INDEX_DIGITS_MAX  # d:chain:tx:-1

# -- shards --------------------------------------------------------------------------------------------
SHARDS_MAX = 64
SHARD_BATCH_MAX = 2000  # commands in one group commit
RECENT_OPS_MAX = 50_000  # applied op ids a shard remembers (~450 bytes each, bench/shard_memory.py)
SHARD_LOAD_PAGE = 10_000  # rows per query when a shard loads its accounts and balances
SHARD_WRITE_ATTEMPTS = 3  # a deadlock or lock-wait timeout rolls back whole: tried again this often
REDELIVER_AFTER_MS = 2_000  # an unacknowledged cross-shard credit is sent again after this, doubling
REDELIVER_MAX_MS = 60_000
REDELIVER_ALERT_ATTEMPTS = 10  # then money waiting in transit is raised to an operator, once

# -- red packets ---------------------------------------------------------------------------------------
RED_PACKET_SHARES_MAX = 10_000
RED_PACKET_EXPIRES_S_MAX = 24 * 3600
RED_PACKET_CODE_RANDOM_BITS = 160  # the code's unguessable part: 40 hex digits after the 2-digit shard
RED_PACKET_CODE_LEN = 2 + RED_PACKET_CODE_RANDOM_BITS // 4
RED_PACKET_ID_LEN = len("rp_") + 24  # "rp_" + 24 hex of sha256(create op id)
RED_PACKET_EXPIRE_BATCH_MAX = 500  # expiries a shard applies per tick; the rest wait for the next tick
RED_PACKET_CLOSED_CLAIMS_MAX = 200_000  # claimant ids a shard keeps in memory for closed packets

# -- account security ------------------------------------------------------------------------------------
RECOVERY_CODES_PER_ACCOUNT = 10  # shown once at registration; each works once
TOTP_DRIFT_STEPS = 1  # a TOTP code of the step before or after the current one (30 s each) is accepted

# -- events and webhooks ---------------------------------------------------------------------------------
EVENT_PAYLOAD_MAX_BYTES = 16 * 1024
EVENT_KIND_MAX_LEN = 48
WEBHOOK_POLL_MS = 500  # the notifier looks for new events this often when idle
WEBHOOK_BATCH = 500  # events fanned out (and published to Redis) per round
WEBHOOK_PARALLEL = 8  # deliveries in flight at once (each to a different endpoint and account)
WEBHOOK_TIMEOUT_S = 5.0  # a receiver answers within this, or the attempt failed
WEBHOOK_BACKOFF_FIRST_MS = 1_000  # after the first failed attempt; doubling
WEBHOOK_BACKOFF_MAX_MS = 3_600_000
WEBHOOK_RETRY_FOR_MS = 3 * 24 * 3_600_000  # then a delivery is abandoned (logged; the account's next event goes)
WEBHOOK_SIGNATURE_TOLERANCE_S = 300  # what a receiver should accept between the signed timestamp and its clock
WEBHOOK_URL_MAX_LEN = 2_000
EVENT_STREAM_MAXLEN = 100_000  # the Redis stream `wallet:events` keeps about this many entries

# -- address pool --------------------------------------------------------------------------------------
POOL_INSERT_CHUNK = 1_000  # keys per transaction when generating the pool
POOL_PREFETCH = 500  # unassigned keys the allocator holds, so a registration needs no pool query

# -- SQL -----------------------------------------------------------------------------------------------
SQL_ROWS_PER_STATEMENT = 1_000  # multi-row statements: far below max_allowed_packet for our row sizes
SQL_IN_LIST_MAX = 500

# -- chain nodes ---------------------------------------------------------------------------------------
RPC_CONNECT_TIMEOUT_MAX_S = 3.0
RPC_RETRY_BACKOFF_S = 0.05  # a failed read is retried on the same node after this, doubling
RPC_RETRY_BACKOFF_MAX_S = 1.0
NODE_REFRESH_EVERY_S = 1.0  # node health checks (one eth_blockNumber per node) at most this often

# -- block watcher -------------------------------------------------------------------------------------
CONFIRMATIONS_MAX = 256
HISTORY_KEEP_MIN = 1024  # blocks of history kept under the tip: the deepest reorg followed automatically
PRUNE_EVERY_BLOCKS = 256
DUE_CREDITS_MAX = 2_000  # deposits credited per step, so one step stays short
DEPOSIT_MARK_CHUNK = 500  # rows per UPDATE when marking credits
ADDRESS_LOAD_CHUNK = 50_000
FETCH_PARALLEL = 4  # block requests in flight at once
FETCH_PART_MIN = 10  # blocks per request at least: tiny requests cost more than they overlap
FEED_AHEAD_BATCHES = 2  # while behind, blocks stay requested this many steps ahead of the tip
FORK_WINDOW_FIRST = 8  # blocks compared in the first walk-back request; doubles each round
SCAN_RETRY_AFTER_ERROR_S = 1.0  # a failed step (node down, database error) waits at least this long
WATCHSET_RECENT_MAX = 4_096  # additions held in a set before they are merged into the sorted array

# -- the front -----------------------------------------------------------------------------------------
BODY_MAX_BYTES = 64 * 1024
SESSION_CACHE_MAX = 100_000
PAY_MEMO_MAX = 100_000
LOCAL_COUNTERS_MAX = 100_000
HTTP_THREADS_DEFAULT = 64  # Python threads running views; a view mostly waits on a shard's group commit
HTTP_THREADS_MAX = 256
HTTP_BACKLOG = 1024
ASK_TIMEOUT_S_DEFAULT = 5.0
SCRAPE_ASK_TIMEOUT_S = 1.0  # /metrics and /readyz ask each actor this long at most
IDEMPOTENCY_RETENTION_S_DEFAULT = 24 * 3600  # refused money requests are answered again this long
# The refusal index holds at most REFUSAL_KEYS_MAX keys (~200 bytes each: ~20 MB); while more refusals than
# that are live, a key it does not hold is looked up in the table, so a refusal is never forgotten, only
# slower to find. Expired rows are deleted REFUSAL_PURGE_BATCH at a time, at most once per
# REFUSAL_PURGE_EVERY_MS, or once per REFUSAL_PURGE_BACKLOG_EVERY_MS while a full batch says more wait.
REFUSAL_KEYS_MAX = 100_000
REFUSAL_PURGE_BATCH = 1_000
REFUSAL_PURGE_EVERY_MS = 60_000
REFUSAL_PURGE_BACKLOG_EVERY_MS = 1_000
RATE_LIMIT_COUNT_MAX = 10**9  # WALLET_RATE_LIMITS bounds
RATE_LIMIT_WINDOW_S_MAX = 7 * 24 * 3600

# -- lifecycle -----------------------------------------------------------------------------------------
SINGLETON_ACTORS = 5  # allocator, BlockWatch (+ its 5 I/O threads use no connection), signer, notifier, spare
ACTOR_START_TIMEOUT_S = 60.0
RESTARTS_MAX_PER_MINUTE = 5
TICK_INTERVAL_MS = 1_000
LOCK_CHECK_INTERVAL_S = 30.0

# -- database connections ------------------------------------------------------------------------------
# One pooled connection per thread that uses the database: HTTP threads, shards, singletons, and the
# operator's few (ops listener, audit). A thread that finds the pool empty waits this long, then 503.
DB_POOL_SPARE = 8
DB_POOL_MAX_CONNECTIONS = HTTP_THREADS_DEFAULT + SHARDS_MAX // 2 + SINGLETON_ACTORS + DB_POOL_SPARE
DB_POOL_WAIT_S = 10


def db_pool_size(http_threads: int, shards: int) -> int:
    """Connections a process needs: every thread that may hold one at once, plus the spare."""
    return http_threads + shards + SINGLETON_ACTORS + DB_POOL_SPARE


# -- relations -----------------------------------------------------------------------------------------
assert SHARDS_MAX <= 100, "a red packet code names its shard in two decimal digits"
assert RED_PACKET_CODE_RANDOM_BITS >= 128 and RED_PACKET_CODE_RANDOM_BITS % 4 == 0
assert len("e:") + RED_PACKET_ID_LEN <= OP_ID_MAX_LEN
assert RED_PACKET_CLOSED_CLAIMS_MAX >= RED_PACKET_SHARES_MAX, "one closed packet's claimants must fit"
assert RED_PACKET_EXPIRE_BATCH_MAX <= SHARD_BATCH_MAX
assert WEBHOOK_RETRY_FOR_MS >= 24 * 3_600_000, "webhooks are retried for at least a day"
assert 0 < WEBHOOK_BACKOFF_FIRST_MS <= WEBHOOK_BACKOFF_MAX_MS < WEBHOOK_RETRY_FOR_MS
assert WEBHOOK_TIMEOUT_S * 1000 < WEBHOOK_BACKOFF_MAX_MS
assert OP_ID_MAX_LEN + max(len(CREDIT_OP_PREFIX), len(BOUNCE_OP_PREFIX)) * 2 <= OP_ID_COLUMN_LEN
assert FRONT_OP_ID_MAX_LEN <= OP_ID_MAX_LEN
assert DEPOSIT_OP_ID_MAX_LEN <= OP_ID_MAX_LEN
assert RECENT_OPS_MAX >= SHARD_BATCH_MAX, "a batch's own op ids must all fit the replay memory"
assert 0 < REDELIVER_AFTER_MS < REDELIVER_MAX_MS and REDELIVER_ALERT_ATTEMPTS >= 1
assert HISTORY_KEEP_MIN >= 4 * CONFIRMATIONS_MAX, "a reorg deeper than the threshold must still be followed"
assert DEPOSIT_MARK_CHUNK <= SQL_IN_LIST_MAX
assert DB_POOL_MAX_CONNECTIONS >= db_pool_size(HTTP_THREADS_DEFAULT, 4)
assert HTTP_THREADS_DEFAULT <= HTTP_THREADS_MAX
assert ACTOR_START_TIMEOUT_S > ASK_TIMEOUT_S_DEFAULT
assert SCRAPE_ASK_TIMEOUT_S < ASK_TIMEOUT_S_DEFAULT
assert REFUSAL_PURGE_BACKLOG_EVERY_MS < REFUSAL_PURGE_EVERY_MS
assert 0 < RPC_RETRY_BACKOFF_S <= RPC_RETRY_BACKOFF_MAX_S
assert FETCH_PART_MIN >= 1 and FEED_AHEAD_BATCHES >= 1
