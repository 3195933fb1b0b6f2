"""A wallet process to be killed: runs the actor system on MariaDB (+ Redis) and, unless --idle, a storm of
random transfers from several threads. Every transfer that `ask` acknowledged is appended to ACK_FILE as
one JSON line, written with a single unbuffered write only after the acknowledgement, so a line in the
file means "the service said it is done" even if the process dies the next instant.

    python -m tests.core.crash_worker DB_URL REDIS_PREFIX ACK_FILE TAG [--threads N] [--idle]

--idle starts the system (which replays the undelivered outbox) and runs until SIGTERM. SIGTERM stops the
system cleanly and exits 0; the tests kill storm runs with SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading

from core import messages as m
from storage.models import Account
from tests.conftest import MASTER_KEY, REDIS_URL
from core.config import Config
from core.errors import InsufficientFunds, Unavailable
from app.logs import setup_logging
from app.system import ActorSystem

AMOUNT_MAX = 100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("db_url")
    parser.add_argument("redis_prefix")
    parser.add_argument("ack_file")
    parser.add_argument("tag", help="prefix of this run's operation ids, unique per run")
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--idle", action="store_true")
    return parser.parse_args()


class AckLog:
    """Appends one line per acknowledged transfer with a single write(2) on an O_APPEND descriptor."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, command: m.Transfer, result: m.OpResult) -> None:
        line = json.dumps({"op": command.op_id, "from": command.account_id, "to": command.to_account,
                           "to_shard": command.to_shard, "amount": command.amount, "status": result.status})
        os.write(self.fd, (line + "\n").encode())


def storm(system: ActorSystem, users: list[tuple[int, int]], acks: AckLog, tag: str, thread: int,
          stop: threading.Event) -> None:
    rng = random.Random(f"{tag}-{thread}")
    n = 0
    while not stop.is_set():
        n += 1
        (sender, _), (recipient, recipient_shard) = rng.sample(users, 2)
        command = m.Transfer(f"{tag}-{thread}-{n}", sender, recipient, recipient_shard, "ETH",
                             rng.randint(1, AMOUNT_MAX))
        try:
            result = system.router.command(command)
        except (InsufficientFunds, Unavailable):
            continue  # not acknowledged: the test must not find it half-applied, nothing more
        acks.record(command, result)


def main() -> int:
    args = parse_args()
    setup_logging("WARNING")
    config = Config(database_url=args.db_url, redis_url=REDIS_URL, redis_prefix=args.redis_prefix,
                    master_key=MASTER_KEY, shards=4, ask_timeout_s=30.0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    system = ActorSystem(config, on_fatal=lambda reason: stop.set()).start()
    try:
        if not args.idle:
            users = list(Account.select(Account.id, Account.shard).where(Account.kind == "user").tuples())
            acks = AckLog(args.ack_file)
            for thread in range(args.threads):
                threading.Thread(target=storm, args=(system, users, acks, args.tag, thread, stop), daemon=True,
                                 name=f"storm-{thread}").start()
        stop.wait()
    finally:
        system.stop()
    return 1 if system.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
