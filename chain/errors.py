"""Chain errors, split by what the caller should do.

Retriable: the node or the network failed this time (timeout, refused connection, HTTP 5xx, a transient
JSON-RPC server error, a null where a value is required, a response that does not parse). Try again later,
possibly on another node. Fatal: the request itself is wrong or the answer can never be right (invalid
params, unknown method, a chain id that differs); retrying changes nothing.

Errors cross actor boundaries, so they hold only plain values (`url`, `method`, `code`) besides the message.
"""

from __future__ import annotations


class ChainError(Exception):
    """`url` is the node's full URL (it may carry an API key: log the message, which names nodes by label, not
    `url`). `code` and `rpc_message` are set when the node answered with a JSON-RPC error object."""

    def __init__(self, message: str, *, url: str | None = None, method: str | None = None,
                 code: int | None = None, rpc_message: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.method = method
        self.code = code
        self.rpc_message = rpc_message


class RetriableChainError(ChainError):
    """Transient: retry later (the client fails over to another node when one keeps failing)."""


class FatalChainError(ChainError):
    """Permanent: the same request gets the same answer from any node."""


class ChainIdMismatch(FatalChainError):
    """A node serves another chain than the one configured (or than the other nodes)."""


class NoHealthyNode(RetriableChainError):
    """Every configured node is down, lagging beyond use, or cooling down after a failure."""


class TransactionRejected(FatalChainError):
    """The node refused a raw transaction (nonce too low, insufficient funds, underpriced...). The node is
    healthy; the transaction is not. `reason` is the node's message."""

    def __init__(self, message: str, *, url: str | None = None, reason: str = "", code: int | None = None) -> None:
        super().__init__(message, url=url, method="eth_sendRawTransaction", code=code, rpc_message=reason)
        self.reason = reason
