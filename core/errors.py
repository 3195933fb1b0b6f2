"""One exception hierarchy for the domain. Each error has a stable machine-readable `code`;
the web front maps it to an HTTP status and a problem-details body (see web/errors.py).

Errors cross actor boundaries (pykka hands the exception to the caller's future), so they hold only
plain values.
"""

from __future__ import annotations


class WalletError(Exception):
    code = "wallet_error"
    status = 400

    def __init__(self, detail: str = "", **extra: object) -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code
        self.extra = extra


class ConfigError(WalletError):
    code = "config_error"
    status = 500


class ValidationError(WalletError):
    code = "validation_error"
    status = 400


class InvalidAmount(ValidationError):
    code = "invalid_amount"


class InvalidAddress(ValidationError):
    code = "invalid_address"


class UnknownAsset(ValidationError):
    code = "unknown_asset"


class SelfTransfer(ValidationError):
    code = "self_transfer"


class ZeroAddress(InvalidAddress):
    code = "zero_address"


class OwnAddress(ValidationError):
    """A withdrawal to one of the service's own addresses: an internal transfer does that without gas."""

    code = "own_address"


class UnknownAccount(WalletError):
    code = "unknown_account"
    status = 404


class WrongShard(WalletError):
    """A command reached a shard that does not own the account: a routing bug, never user input."""

    code = "wrong_shard"
    status = 500


class InsufficientFunds(WalletError):
    code = "insufficient_funds"
    status = 422


class BalanceOverflow(WalletError):
    code = "balance_overflow"
    status = 422


class AccountOnHold(WalletError):
    code = "account_on_hold"
    status = 423


class OperationConflict(WalletError):
    """The operation id was used before with different content."""

    code = "idempotency_key_reused"
    status = 422


class OperationInProgress(WalletError):
    code = "operation_in_progress"
    status = 409


class PoolEmpty(WalletError):
    code = "address_pool_empty"
    status = 503


class UsernameTaken(WalletError):
    code = "username_taken"
    status = 409


class CommitFailed(WalletError):
    """The batch holding this operation could not be committed. If the failure came before the write,
    nothing was applied; if the commit's outcome is unknown, it may have been: a retry with the same
    operation id is safe either way (a replay answers the first result)."""

    code = "commit_failed"
    status = 503


class UnknownWithdrawal(WalletError):
    code = "unknown_withdrawal"
    status = 404


class BelowMinimum(WalletError):
    code = "amount_below_minimum"
    status = 422


class DailyLimitExceeded(WalletError):
    code = "daily_limit_exceeded"
    status = 422


class WithdrawalStateConflict(WalletError):
    """The withdrawal is not in the state the action needs (cancel after approval, approve a rejected one)."""

    code = "withdrawal_state_conflict"
    status = 409


class NoReserveProof(WalletError):
    """No proof-of-reserves snapshot of the asset yet, or none that holds the caller's balance."""

    code = "no_reserve_proof"
    status = 404


class NoReconciliation(WalletError):
    code = "no_reconciliation"
    status = 404


class AlreadyApproved(WalletError):
    code = "already_approved"
    status = 409


class Forbidden(WalletError):
    code = "forbidden"
    status = 403


class StateMismatch(WalletError):
    """A conditional update found the row in another state than the writer's memory: a bug or a second
    writer. The batch is rolled back and the writer reloads from the database."""

    code = "state_mismatch"
    status = 503


class UnknownMessage(WalletError):
    """An actor was asked something it has no handler for: a programmer error, answered to the asker."""

    code = "unknown_message"
    status = 500


class AdminNameTaken(WalletError):
    code = "admin_name_taken"
    status = 409


class Unavailable(WalletError):
    code = "service_unavailable"
    status = 503


# -- red packets -------------------------------------------------------------------------------------------


class InvalidRedPacket(ValidationError):
    """A red packet that cannot be made: fewer base units than shares, an unknown mode, a bad expiry."""

    code = "invalid_red_packet"


class UnknownRedPacket(WalletError):
    code = "unknown_red_packet"
    status = 404


class AlreadyClaimed(WalletError):
    code = "already_claimed"
    status = 409


class ClaimedOut(WalletError):
    code = "claimed_out"
    status = 410


class RedPacketExpired(WalletError):
    code = "expired"
    status = 410


def refused_for_good(error: Exception) -> bool:
    """A shard's own refusal of the command (unknown asset or account, an amount it cannot hold, an op id
    reused with other content...) gives the same answer on every retry. No answer (timeout, shard down or
    restarting), a failed commit or an operation still in progress may go through next time."""
    return isinstance(error, WalletError) and not isinstance(error, (Unavailable, CommitFailed, OperationInProgress))
