"""ERC-20 Transfer logs: the topic to filter on and a strict decoder.

A Transfer log has 3 topics (signature, from, to) and a 32-byte amount in data. Anything else carrying the
same first topic (an ERC-721 Transfer has the token id as a 4th topic and no data; a broken contract may
emit anything) is not a token transfer and decodes to None, never to a wrong amount.
"""

from __future__ import annotations

from eth_utils import keccak

from chain.types import Log, checksum

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()

_ADDRESS_TOPIC_PAD = "0x" + "0" * 24


def decode_transfer(log: Log) -> tuple[str, str, int] | None:
    """(from, to, amount) with checksummed addresses, or None if the log is not a well-formed Transfer."""
    if len(log.topics) != 3 or log.topics[0] != TRANSFER_TOPIC or len(log.data) != 66:
        return None
    sender = _topic_address(log.topics[1])
    receiver = _topic_address(log.topics[2])
    if sender is None or receiver is None:
        return None
    return sender, receiver, int(log.data, 16)


def _topic_address(topic: str) -> str | None:
    # an indexed address is left-padded with 12 zero bytes; dirty padding means it is not an address
    if not topic.startswith(_ADDRESS_TOPIC_PAD):
        return None
    return checksum("0x" + topic[26:])


TRANSFER_SELECTOR = "0x" + keccak(text="transfer(address,uint256)")[:4].hex()  # 0xa9059cbb
_UINT256_LIMIT = 2**256


def encode_transfer(to_address: str, amount: int) -> str:
    """Calldata of `transfer(to_address, amount)` as 0x-hex: the selector, then the address and the amount as
    32-byte words. Refuses what the ABI cannot carry (an address that is not 20 bytes, an amount outside uint256)."""
    to = to_address.lower().removeprefix("0x")
    if len(to) != 40 or any(c not in "0123456789abcdef" for c in to):
        raise ValueError(f"not a 20-byte address: {to_address!r}")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < _UINT256_LIMIT:
        raise ValueError(f"a uint256 amount is an int in [0, 2**256), got {amount!r}")
    return TRANSFER_SELECTOR + "0" * 24 + to + f"{amount:064x}"
