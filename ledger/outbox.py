"""A shard's outbox relay, without I/O: the cross-shard credits it owes until their targets acknowledge them.

The source shard writes its debit and the outbox row in one transaction (ledger/persistence.py); once that
is committed the credit is owed here. The relay hands out what is due for (re)delivery with a doubling
interval, so a target that keeps refusing or is stuck is not flooded, and raises money waiting in transit
to an operator once per credit. Acknowledgements are remembered until the next batch writes them.

Time is integer milliseconds from a clock the caller passes (tests pass a fake one).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, Sequence

from core.limits import REDELIVER_AFTER_MS, REDELIVER_ALERT_ATTEMPTS, REDELIVER_MAX_MS
from core.messages import CrossShardCredit, ReturnCredit

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class OutboxEntry:
    credit: CrossShardCredit | ReturnCredit
    target_shard: int
    sent_at_ms: int | None  # None: not sent by this process yet (loaded from the database): due at once
    attempts: int  # sends so far by this process

    def due(self, now_ms: int) -> bool:
        if self.sent_at_ms is None:
            return True
        return now_ms - self.sent_at_ms >= redelivery_interval_ms(self.attempts)


def redelivery_interval_ms(attempts: int) -> int:
    """How long after its `attempts`-th send a credit is sent again: doubling, bounded."""
    return min(REDELIVER_AFTER_MS * 2 ** max(attempts - 1, 0), REDELIVER_MAX_MS)


class OutboxRelay:
    def __init__(self, shard_id: int, clock_ms: Callable[[], int]) -> None:
        self.shard_id = shard_id
        self.clock_ms = clock_ms
        self.unacked: dict[str, OutboxEntry] = {}  # credit op id -> entry
        self.marks_unwritten: list[str] = []  # acknowledged credit op ids, written with the next batch

    def __len__(self) -> int:
        return len(self.unacked)

    def load(self, entries: Iterable[OutboxEntry]) -> None:
        for entry in entries:
            self.unacked[entry.credit.op_id] = entry

    def owe(self, credit: CrossShardCredit | ReturnCredit, target_shard: int) -> None:
        """A credit committed with its debit, and sent once right after the commit."""
        self.unacked[credit.op_id] = OutboxEntry(credit, target_shard, self.clock_ms(), 1)

    def delivered(self, op_ids: Sequence[str]) -> None:
        for op_id in op_ids:
            if self.unacked.pop(op_id, None) is not None:
                self.marks_unwritten.append(op_id)

    def marks_written(self, count: int) -> None:
        del self.marks_unwritten[:count]

    def clear(self) -> None:
        self.unacked.clear()
        self.marks_unwritten.clear()  # their credits are redelivered and acknowledged again

    def due(self) -> list[tuple[int, CrossShardCredit | ReturnCredit]]:
        """Credits not acknowledged in time (or left from before a restart), to send again now."""
        now_ms = self.clock_ms()
        due = []
        for entry in self.unacked.values():
            if not entry.due(now_ms):
                continue
            due.append((entry.target_shard, entry.credit))
            entry.sent_at_ms = now_ms
            entry.attempts += 1
            if entry.attempts == REDELIVER_ALERT_ATTEMPTS:
                log.critical("cross-shard credit still not acknowledged; money waits in transit",
                             extra={"shard": self.shard_id, "op_id": entry.credit.op_id,
                                    "target_shard": entry.target_shard, "attempts": entry.attempts})
        return due
