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
# Money in transit longer than this (an outbox credit neither applied nor returned) is a violation for
# `wallet audit`: far beyond the redelivery schedule up to the alert.
TRANSIT_AGE_MAX_MS = 30 * 60_000

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

# -- master keys (core/keys.py envelopes) --------------------------------------------------------------
MASTER_KEY_VERSION_MAX = 32_767  # pool_key.key_version and wallet_key.master_version are SMALLINT
MASTER_KEYS_RETIRED_MAX = 8  # WALLET_MASTER_KEYS_RETIRED: more means rotations were never finished
KEY_ROTATE_CHUNK = 1_000  # keys re-wrapped per transaction by `wallet keys rotate`

# -- SQL -----------------------------------------------------------------------------------------------
SQL_ROWS_PER_STATEMENT = 1_000  # multi-row statements: far below max_allowed_packet for our row sizes
SQL_IN_LIST_MAX = 500
# A transaction sent as one script (storage/sql.transaction_script) is split past this many characters (at
# most 4 bytes each in UTF-8; its rows are ASCII): below max_allowed_packet (16 MiB by default on MariaDB,
# 4 MiB on MySQL 5.7, 64 MiB on 8.0).
SQL_SCRIPT_MAX_CHARS = 1 << 20

# -- chain nodes ---------------------------------------------------------------------------------------
RPC_CONNECT_TIMEOUT_MAX_S = 3.0
RPC_RETRY_BACKOFF_S = 0.05  # a failed read is retried on the same node after this, doubling
RPC_RETRY_BACKOFF_MAX_S = 1.0
NODE_REFRESH_EVERY_S = 1.0  # node health checks (one eth_blockNumber per node) at most this often
# What a node exposes besides the reads (chain/exposure.py): a few harmless calls per node at start.
EXPOSURE_PROBE_TIMEOUT_S = 2.0  # per call
EXPOSURE_PROBE_CALLS_MAX = 8  # per node

# -- fee quotes (chain/fees.py) ------------------------------------------------------------------------
FEE_HISTORY_BLOCKS = 20  # eth_feeHistory window
FEE_HISTORY_BLOCKS_MAX = 1024  # what nodes serve at most (geth's bound; the embedded chain's too)
FEE_REWARD_PERCENTILES = (10, 50, 90)  # the tips of slow, standard, fast: percentiles within each block
PRIORITY_FEE_FLOOR_WEI = 10**6  # 0.001 gwei: geth's default minimum tip for block building since 1.14
MAX_FEE_BASE_FEE_MULTIPLE = 2  # max fee = 2 x next base fee + tip: six full blocks in a row (+12.5 % each)
FEE_QUOTE_TTL_MS = 5_000  # quotes are reused this long, so a request path does not ask the node each time
FEE_QUOTE_RETRY_AFTER_MS = 1_000  # after a failed fetch, callers get Unavailable without asking again
ETH_TRANSFER_GAS = 21_000
TOKEN_TRANSFER_GAS_MAX = 500_000  # an estimate above is no plain ERC-20 transfer: refused, not quoted
TOKEN_GAS_MARGIN_PERCENT = 25  # the gas limit of a token transfer: the estimate plus this, and at least
TOKEN_GAS_MARGIN_MIN = 22_100  # one storage slot going from zero to non-zero (the state may change meanwhile)

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
# Cluster gates trust a cached session or pay-password memo this long after checking it against the database:
# the bound on how long another gate's logout, revocation or new pay password takes to hold here.
FRONT_RECHECK_MS = 1_000
LOCAL_COUNTERS_MAX = 100_000
HTTP_THREADS_DEFAULT = 64  # Python threads running views; a view mostly waits on a shard's group commit
HTTP_THREADS_MAX = 256
HTTP_BACKLOG = 1024
# Slow and idle clients (app/gate.py, app/serve.py). A connection holds one of HTTP_CONNECTIONS_MAX places
# from accept to close, whatever it sends; the headers of each request (and the silence before them on an
# idle keep-alive connection) must arrive within the idle timeout, a body within HTTP_BODY_READ_TIMEOUT_MS
# of its headers. Bodies are read before a view thread is taken, so slow ones cost memory, not threads.
HTTP_CONNECTIONS_MAX = 16_384
HTTP_FDS_SPARE = 1_024  # file descriptors kept for everything else (database, Redis, nodes, logs)
HTTP_IDLE_TIMEOUT_S_DEFAULT = 10
HTTP_IDLE_TIMEOUT_S_MAX = 300
HTTP_BODY_READ_TIMEOUT_MS = 10_000
# SIGTERM: requests in flight get this long to finish (a body still arriving, then the view's asks), then
# the actors stop whatever the HTTP side is doing; the whole exit stays under SHUTDOWN_TOTAL_S_MAX.
HTTP_DRAIN_TIMEOUT_S = 20
SHUTDOWN_TOTAL_S_MAX = 30
# The operations listener (/readyz, /metrics on WALLET_OPS_HTTP): a few scrapers, each read bounded.
OPS_CONNECTIONS_MAX = 32
OPS_READ_TIMEOUT_S = 10
ASK_TIMEOUT_S_DEFAULT = 5.0
# Cluster mode's transport (actors/transport.py).
STREAM_READ_BLOCK_MS = 500  # one XREAD(GROUP) waits this long for news; bounds how fast a stopping thread notices
STREAM_CLAIM_IDLE_MS = 3000  # an entry pending this long on another consumer is taken over (its host presumed dead)
STREAM_CLAIM_EVERY_MS = 1000
STREAM_CLAIM_PASSES_MAX = 100  # XAUTOCLAIM pages of one claim pass
STREAM_REPLY_MAXLEN = 100_000  # a reply stream is read as it is written; the cap only bounds a dead reader's
STREAM_INBOX_MAXLEN = 1_000_000  # bounds an inbox no host reads
STREAM_REDIS_RETRY_S = 0.5  # a host or reader whose Redis went away tries again this often
STREAM_HOST_BATCHES_IN_FLIGHT = 8  # batches an inbox host has handed to its actor and not yet answered
STREAM_HOST_ANSWER_TIMEOUT_S = 60.0  # the local actor answers a batch within this, or its entries stay pending
INFLIGHT_MARGIN_MS = 1_000  # an Idempotency-Key's in-flight mark lives the ask timeout plus this
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
# argon2id (web/security.py HashSlots): this many at once (2 cores), this many queued for at most HASH_WAIT_S;
# beyond, 503. Queued ones hold view threads, so the two together stay well under the thread count.
HASH_RUNNING_MAX = 4
HASH_WAITING_MAX = 28
HASH_WAIT_S = 5.0
DEVICE_TOKEN_TTL_S = 90 * 24 * 3600  # a known device stays known this long after the login that made it
RATE_LIMIT_COUNT_MAX = 10**9  # WALLET_RATE_LIMITS bounds
RATE_LIMIT_WINDOW_S_MAX = 7 * 24 * 3600

# -- withdrawals and the signer ------------------------------------------------------------------------
GAS_PRICE_CAP_GWEI_DEFAULT = 100
REPLACE_AFTER_MS_DEFAULT = 180_000  # no receipt this long after the last attempt: a replacement (rule 6)
REPLACE_AFTER_MS_MAX = 30 * 60_000  # the wait doubles with every attempt up to this
REPLACE_BUMP_PER_MILLE = 125  # a replacement raises both fee fields by at least 12.5 % (nodes require 10 %)
DAILY_WINDOW_MS = 24 * 3600 * 1000  # the rolling limit of withdrawals per account
APPROVALS_FOUR_EYES = 2
SIGN_BATCH_MAX = 200  # withdrawals signed in one database transaction
SIGN_BATCHES_PER_TICK = 25  # a tick signs at most this many batches (5,000 withdrawals), then looks at the rest
OPEN_WITHDRAWALS_MAX = 1_000_000  # a shard holds its open withdrawals in memory
WITHDRAWAL_REASON_MAX_LEN = 255
SIGNER_TICK_MS = 1_000  # the signer looks for approved, unsent and stuck withdrawals this often
TX_WATCH_RELOAD_MS = 10_000  # BlockWatch re-reads the hashes it watches from the database this often

# -- reconciliation and proof of reserves (treasury/reconcile.py, treasury/reserves.py) --------------------
RECONCILE_INTERVAL_MS_DEFAULT = 60_000  # the reconciler compares ledger and chain this often
RECONCILE_BALANCE_BATCH = 500  # eth_getBalance / balanceOf calls in one JSON-RPC batch
RECONCILE_SNAPSHOTS_KEPT = 10_000  # older reconciliation rows are deleted as new ones are written
RESERVE_LEAVES_MAX = 10_000_000  # a proof-of-reserves tree holds at most this many balances per asset
RESERVE_PAGE_MAX = 500  # deposit addresses listed per page at GET /api/v1/reserves

# -- treasury: sweeps and cold storage (treasury/sweeps.py) -------------------------------------------------
SWEEPS_PER_TICK = 200  # sweeps (and their gas top-ups) signed in one database transaction, sent as one batch
SWEEP_BATCHES_PER_TICK = 5  # a tick signs at most this many batches (1,000 sweeps): a bounded burst of sends
SWEEP_CANDIDATES_MAX = 1_000  # deposit addresses whose balances are read per tick
SWEEP_FOLLOW_UP_MAX = 1_000  # open sweeps whose receipts are read per tick
SWEEP_SPEED = "standard"  # custody moves are not urgent; the fee quote they sign at

# -- the admin console (/admin) ---------------------------------------------------------------------------
# Staff sessions end after CONSOLE_IDLE_MS without a request, and CONSOLE_SESSION_MAX_MS after login whatever
# happens. CONSOLE_LOGIN_FAILURES_MAX wrong passwords or codes in a row lock the staff member out for
# CONSOLE_LOCKOUT_MS. Session rows past their idle time are deleted CONSOLE_SESSION_PURGE_BATCH at a time, at
# most once per CONSOLE_SESSION_PURGE_EVERY_MS.
CONSOLE_IDLE_MS = 15 * 60_000
CONSOLE_SESSION_MAX_MS = 12 * 3600_000
CONSOLE_LOGIN_FAILURES_MAX = 5
CONSOLE_LOCKOUT_MS = 15 * 60_000
CONSOLE_SESSION_PURGE_BATCH = 500
CONSOLE_SESSION_PURGE_EVERY_MS = 60_000
# A request writes its session's last-seen time only if the stored one is this old (or the session changed): a
# page view is then a read, not a committed write (an fsync) each time; the idle timeout is this much shorter
# at worst.
CONSOLE_SESSION_TOUCH_MS = 15_000
CONSOLE_PAGE_ROWS = 50  # rows per page of a list (flagged deposits, holds, staff log)
CONSOLE_HISTORY_ROWS = 20  # journal entries and deposits on an account's page
CONSOLE_REASON_MAX_LEN = 255  # an operator's reason; also the hold_reason column
CONSOLE_QUERY_MAX_LEN = 64  # an account lookup (a username, an address, an id)
STAFF_PASSWORD_MIN_LEN = 12
STAFF_PASSWORD_MAX_LEN = 128
TOTP_STEP_S = 30  # RFC 6238 time step
TOTP_DIGITS = 6
TOTP_WINDOW_STEPS = 1  # codes of one step before or after now are accepted (clock drift)
CONSOLE_STYLESHEET_MAX_AGE_S = 300  # the console's only static file; pages themselves are never cached

# -- lifecycle -----------------------------------------------------------------------------------------
SINGLETON_ACTORS = 5  # allocator, BlockWatch (+ its 5 I/O threads use no connection), signer, notifier, spare
ACTOR_START_TIMEOUT_S = 60.0
RESTARTS_MAX_PER_MINUTE = 5
TICK_INTERVAL_MS = 1_000
LOCK_CHECK_INTERVAL_S = 30.0
# Cluster mode: how often a host checks it still holds each shard's lock (a ping on the lock's connection); a
# shard whose lock is gone is fenced at once, so an idle shard also lets go instead of waiting for a batch.
OWNER_LOCK_CHECK_INTERVAL_S = 1.0
# Membership in etcd: a process renews its lease every MEMBERSHIP_INTERVAL_S; one that stops (dies, is paused)
# drops out of the member list once its lease lapses (WALLET_ETCD_LEASE_S), and its shards move. etcd's own
# floor for a lease is about 1.5 s (its election timeout); a call to etcd gives up after ETCD_CALL_TIMEOUT_S.
ETCD_LEASE_S_DEFAULT = 10
ETCD_LEASE_S_MIN = 2
ETCD_LEASE_S_MAX = 300
MEMBERSHIP_INTERVAL_S = 0.5
ETCD_CALL_TIMEOUT_S = 1.0

# -- database connections ------------------------------------------------------------------------------
# One pooled connection per thread that uses the database: HTTP threads, shards, singletons, and the
# operator's few (ops listener, audit). A thread that finds the pool empty waits this long, then 503.
DB_POOL_SPARE = 8
DB_POOL_MAX_CONNECTIONS = HTTP_THREADS_DEFAULT + SHARDS_MAX // 2 + SINGLETON_ACTORS + DB_POOL_SPARE
DB_POOL_WAIT_S = 10
# A pooled connection back in the pool for less than this is handed out again without a ping: peewee pings
# on every checkout while holding the database's one lock, which serialised every view that reads the database
# (withdrawal requests: 36-136/s). A connection the server dropped within this window fails its first query.
DB_POOL_PING_IDLE_MS = 1_000


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
assert len(BOUNCE_OP_PREFIX) == len(CREDIT_OP_PREFIX) and BOUNCE_OP_PREFIX != CREDIT_OP_PREFIX
assert FRONT_OP_ID_MAX_LEN <= OP_ID_MAX_LEN
assert DEPOSIT_OP_ID_MAX_LEN <= OP_ID_MAX_LEN
assert RECENT_OPS_MAX >= SHARD_BATCH_MAX, "a batch's own op ids must all fit the replay memory"
assert 0 < REDELIVER_AFTER_MS < REDELIVER_MAX_MS and REDELIVER_ALERT_ATTEMPTS >= 1
assert TRANSIT_AGE_MAX_MS > 2 * sum(min(REDELIVER_AFTER_MS * 2 ** n, REDELIVER_MAX_MS)
                                    for n in range(REDELIVER_ALERT_ATTEMPTS)), "the audit waits for the relay"
assert HISTORY_KEEP_MIN >= 4 * CONFIRMATIONS_MAX, "a reorg deeper than the threshold must still be followed"
assert DEPOSIT_MARK_CHUNK <= SQL_IN_LIST_MAX
assert MASTER_KEYS_RETIRED_MAX < MASTER_KEY_VERSION_MAX
assert EXPOSURE_PROBE_TIMEOUT_S * EXPOSURE_PROBE_CALLS_MAX < ACTOR_START_TIMEOUT_S, "a node's probes fit a start"
assert 1 <= FEE_HISTORY_BLOCKS <= FEE_HISTORY_BLOCKS_MAX
assert len(FEE_REWARD_PERCENTILES) == 3 and list(FEE_REWARD_PERCENTILES) == sorted(FEE_REWARD_PERCENTILES)
assert all(0 <= p <= 100 for p in FEE_REWARD_PERCENTILES)
assert 0 < FEE_QUOTE_RETRY_AFTER_MS <= FEE_QUOTE_TTL_MS
assert MAX_FEE_BASE_FEE_MULTIPLE >= 1 and PRIORITY_FEE_FLOOR_WEI >= 1
assert ETH_TRANSFER_GAS + TOKEN_GAS_MARGIN_MIN < TOKEN_TRANSFER_GAS_MAX
assert KEY_ROTATE_CHUNK <= SQL_ROWS_PER_STATEMENT, "a rotation chunk is written in one statement"
assert 5 * KEY_ROTATE_CHUNK + 2 <= 32_766, "... whose parameters SQLite takes (SQLITE_MAX_VARIABLE_NUMBER)"
assert DB_POOL_MAX_CONNECTIONS >= db_pool_size(HTTP_THREADS_DEFAULT, 4)
assert HTTP_THREADS_DEFAULT <= HTTP_THREADS_MAX
assert HASH_RUNNING_MAX + HASH_WAITING_MAX <= HTTP_THREADS_DEFAULT // 2, "password checks leave half the views free"
assert HASH_WAIT_S < ASK_TIMEOUT_S_DEFAULT * 2
assert ACTOR_START_TIMEOUT_S > ASK_TIMEOUT_S_DEFAULT
assert SCRAPE_ASK_TIMEOUT_S < ASK_TIMEOUT_S_DEFAULT
assert STREAM_CLAIM_IDLE_MS < ASK_TIMEOUT_S_DEFAULT * 1000, \
    "what a dead host left is claimed again while its callers still wait for the answer"
assert STREAM_READ_BLOCK_MS < STREAM_CLAIM_IDLE_MS and STREAM_CLAIM_EVERY_MS <= STREAM_CLAIM_IDLE_MS
assert STREAM_HOST_ANSWER_TIMEOUT_S > ASK_TIMEOUT_S_DEFAULT
assert OWNER_LOCK_CHECK_INTERVAL_S <= LOCK_CHECK_INTERVAL_S
# A live process renews its lease (interval plus one slow call) well before even the shortest lease lapses.
assert MEMBERSHIP_INTERVAL_S + ETCD_CALL_TIMEOUT_S < ETCD_LEASE_S_MIN <= ETCD_LEASE_S_DEFAULT <= ETCD_LEASE_S_MAX
assert HTTP_DRAIN_TIMEOUT_S * 1000 > HTTP_BODY_READ_TIMEOUT_MS + ASK_TIMEOUT_S_DEFAULT * 1000, \
    "a request whose body arrives at the deadline must still finish within the drain"
assert HTTP_DRAIN_TIMEOUT_S < SHUTDOWN_TOTAL_S_MAX, "the actors need time to stop after the drain"
assert HTTP_IDLE_TIMEOUT_S_DEFAULT <= HTTP_IDLE_TIMEOUT_S_MAX and HTTP_CONNECTIONS_MAX > HTTP_BACKLOG
assert REFUSAL_PURGE_BACKLOG_EVERY_MS < REFUSAL_PURGE_EVERY_MS
assert 0 < RPC_RETRY_BACKOFF_S <= RPC_RETRY_BACKOFF_MAX_S
assert FETCH_PART_MIN >= 1 and FEED_AHEAD_BATCHES >= 1
assert 0 < REPLACE_AFTER_MS_DEFAULT <= REPLACE_AFTER_MS_MAX
assert REPLACE_BUMP_PER_MILLE >= 100, "nodes refuse a replacement that raises the fees by less than 10 %"
assert SIGN_BATCH_MAX <= SQL_IN_LIST_MAX
assert RECONCILE_BALANCE_BATCH <= SQL_IN_LIST_MAX
assert CONSOLE_IDLE_MS < CONSOLE_SESSION_MAX_MS and CONSOLE_SESSION_PURGE_EVERY_MS <= CONSOLE_IDLE_MS
assert CONSOLE_SESSION_TOUCH_MS * 10 <= CONSOLE_IDLE_MS
assert CONSOLE_LOGIN_FAILURES_MAX >= 1 and CONSOLE_LOCKOUT_MS >= 60_000
assert STAFF_PASSWORD_MIN_LEN <= STAFF_PASSWORD_MAX_LEN and TOTP_WINDOW_STEPS * TOTP_STEP_S * 1000 < CONSOLE_LOCKOUT_MS
assert max(CONSOLE_PAGE_ROWS, CONSOLE_SESSION_PURGE_BATCH) <= SQL_IN_LIST_MAX and CONSOLE_REASON_MAX_LEN <= 255
