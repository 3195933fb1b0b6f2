"""Broadcasting signed transactions to every configured node, and what each answer means (DESIGN.md rule 5).

A raw transaction is sent to all nodes, not only the active one: a node that lost it, or never had it,
learns it from us. One batch array per node per call. A node's answer is one of:
    accepted        the hash, as computed from the bytes
    known           "already known" (and the like): we sent it before; nothing to do
    nonce_too_low   the nonce is used: ours was mined (check every hash we signed for it) or someone else's
    underpriced     "replacement transaction underpriced": a transaction with this nonce is in its pool
    rejected        another refusal (funds, fee cap, bad encoding): the node is fine, the transaction is not
    no_answer       timeout, connection refused, garbage: nothing is known; the same bytes go again later
The first four count as "sent". A transaction none of the nodes took stays `signed` and is sent again.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Sequence

from eth_utils import keccak

from chain.errors import ChainError
from chain.transport import Transport

_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "alreadyknown", "already in pool")
_NONCE_TOO_LOW = ("nonce too low", "nonce is too low", "oldnonce", "nonce has already been used")
_UNDERPRICED = ("replacement transaction underpriced", "replacement underpriced", "replacement fee too low")


class Answer(enum.Enum):
    ACCEPTED = "accepted"
    KNOWN = "known"
    NONCE_TOO_LOW = "nonce_too_low"
    UNDERPRICED = "underpriced"
    REJECTED = "rejected"
    NO_ANSWER = "no_answer"

    @property
    def sent(self) -> bool:
        return self in (Answer.ACCEPTED, Answer.KNOWN, Answer.NONCE_TOO_LOW, Answer.UNDERPRICED)


@dataclasses.dataclass(frozen=True)
class SendResult:
    """Every node's answer to one raw transaction."""

    tx_hash: str
    answers: tuple[tuple[str, Answer, str], ...]  # (node label, answer, the node's message if any)

    @property
    def sent(self) -> bool:
        return any(answer.sent for _, answer, _ in self.answers)

    @property
    def nonce_used(self) -> bool:
        """A node says the nonce is taken (by this transaction mined, or by another one)."""
        return any(answer is Answer.NONCE_TOO_LOW for _, answer, _ in self.answers)

    def summary(self) -> str:
        return "; ".join(f"{label}: {answer.value}{' (' + text + ')' if text else ''}"
                         for label, answer, text in self.answers)[:250]


def tx_hash_of(raw: bytes) -> str:
    return "0x" + keccak(raw).hex()


def classify(outcome: object, expected_hash: str) -> tuple[Answer, str]:
    """One node's answer to one eth_sendRawTransaction, as returned by Transport.batch_outcomes."""
    if isinstance(outcome, str):
        if outcome.lower() == expected_hash:
            return Answer.ACCEPTED, ""
        return Answer.NO_ANSWER, f"node answered hash {outcome[:70]}"  # a node that makes hashes up is not trusted
    if not isinstance(outcome, ChainError) or outcome.code is None:
        return Answer.NO_ANSWER, str(outcome)[:120]
    text = outcome.rpc_message.lower()
    if any(marker in text for marker in _ALREADY_KNOWN):
        return Answer.KNOWN, ""
    if any(marker in text for marker in _NONCE_TOO_LOW):
        return Answer.NONCE_TOO_LOW, outcome.rpc_message[:120]
    if any(marker in text for marker in _UNDERPRICED):
        return Answer.UNDERPRICED, outcome.rpc_message[:120]
    return Answer.REJECTED, outcome.rpc_message[:120]


class Broadcaster:
    """Sends raw transactions to every node: `nodes` are (label, url) pairs; labels never carry a secret."""

    def __init__(self, nodes: Sequence[tuple[str, str]], transport: Transport, batch_max: int = 200) -> None:
        if not nodes:
            raise ValueError("at least one node is needed to broadcast")
        self.nodes = tuple(nodes)
        self.transport = transport
        self.batch_max = batch_max

    def send(self, raws: Sequence[bytes]) -> list[SendResult]:
        hashes = [tx_hash_of(raw) for raw in raws]
        per_node: list[list[tuple[Answer, str]]] = []
        for _, url in self.nodes:
            per_node.append(self._send_to(url, raws, hashes))
        return [SendResult(h, tuple((label, *node[i]) for (label, _), node in zip(self.nodes, per_node)))
                for i, h in enumerate(hashes)]

    def _send_to(self, url: str, raws: Sequence[bytes], hashes: Sequence[str]) -> list[tuple[Answer, str]]:
        answers: list[tuple[Answer, str]] = []
        for start in range(0, len(raws), self.batch_max):
            part = raws[start:start + self.batch_max]
            calls = [("eth_sendRawTransaction", ["0x" + raw.hex()]) for raw in part]
            try:
                outcomes = self.transport.batch_outcomes(url, calls)
            except ChainError as exc:  # the node did not answer the batch at all
                answers.extend((Answer.NO_ANSWER, str(exc)[:120]) for _ in part)
                continue
            answers.extend(classify(o, h) for o, h in zip(outcomes, hashes[start:start + self.batch_max]))
        return answers
