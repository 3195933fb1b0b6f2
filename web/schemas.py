"""Typed request and response bodies. Requests are strict (`extra='forbid'`, no type coercion: an
amount is a string of digits, never a number); the OpenAPI document is generated from these models, so
what it says is what the server checks.
"""

from __future__ import annotations

from typing import Annotated, Literal

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.limits import RED_PACKET_EXPIRES_S_MAX, RED_PACKET_SHARES_MAX

# Lowercase only, so "Alice" and "alice" cannot be two different people; no ':' (system accounts use it).
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{2,31}$"
# A positive whole number of base units below 10**65 (the DECIMAL(65,0) column), without leading zeros.
AMOUNT_PATTERN = r"^[1-9][0-9]{0,64}$"
SIGNED_AMOUNT_PATTERN = r"^(0|-?[1-9][0-9]{0,64})$"
ASSET_PATTERN = r"^[A-Z0-9]{1,16}$"
# At most 18 digits: below 2**63, so SQLite can bind it (a larger integer overflows there, a 500).
CURSOR_PATTERN = r"^[1-9][0-9]{0,17}$"
ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
_QUERY_INT_RE = re.compile(r"^[0-9]{1,6}$")
# <issued at, s>.<24 hex nonce>.<32 hex MAC> (web/security.py DeviceTokens)
DEVICE_TOKEN_PATTERN = r"^[0-9]{1,12}\.[0-9a-f]{24}\.[0-9a-f]{32}$"

Username = Annotated[str, Field(pattern=USERNAME_PATTERN, min_length=3, max_length=32,
                                description="3-32 characters: lowercase letters, digits, '_', '.', '-'",
                                examples=["alice"])]
# No control characters (C0, DEL, C1) in a secret that is chosen: a NUL-only password is no password.
SECRET_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
Password = Annotated[str, Field(min_length=8, max_length=128, pattern=SECRET_PATTERN,
                                description="8-128 characters, no control characters")]
# A login checks the password, not the registration policy: a short wrong one is a 401 like any wrong one.
LoginPassword = Annotated[str, Field(min_length=1, max_length=128, description="1-128 characters")]
PayPassword = Annotated[str, Field(min_length=6, max_length=128, pattern=SECRET_PATTERN,
                                   description="6-128 characters, no control characters")]
Amount = Annotated[str, Field(pattern=AMOUNT_PATTERN, max_length=65,
                              description="Base units (wei for ETH) as a string of digits, 1 <= amount < 10**65",
                              examples=["1000000000000000000"])]
BalanceAmount = Annotated[str, Field(pattern=r"^[0-9]{1,65}$", description="Base units as a string of digits")]
AssetSymbol = Annotated[str, Field(pattern=ASSET_PATTERN, max_length=16, examples=["ETH"])]
Timestamp = Annotated[str, Field(description="RFC 3339 UTC time", examples=["2024-01-01T00:00:00.000Z"])]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- requests --------------------------------------------------------------------------------------


class RegisterRequest(Strict):
    username: Username
    password: Password
    pay_password: PayPassword


class LoginRequest(Strict):
    username: Username
    password: LoginPassword
    device_token: str | None = Field(default=None, pattern=DEVICE_TOKEN_PATTERN, max_length=80, description=(
        "`device_token` of an earlier login of this account from this device: failed logins of strangers "
        "never lock a known device out"))


class TransferRequest(Strict):
    to_username: Username
    asset: AssetSymbol
    amount: Amount
    pay_password: PayPassword


Speed = Literal["slow", "standard", "fast"]
WithdrawalStatus = Literal["reviewing", "approved", "signed", "broadcast", "confirmed", "failed", "rejected",
                           "cancelled"]


class WithdrawalRequest(Strict):
    asset: AssetSymbol
    to_address: str = Field(max_length=64, description="EIP-55 address; all-lowercase is accepted and checksummed",
                            examples=["0x000000000000000000000000000000000000dEaD"])
    amount: Amount
    pay_password: PayPassword
    speed: Speed = Field(description="How fast the fee should get it mined: it sets the fee quoted now")
    totp_code: str | None = Field(default=None, pattern=r"^[0-9]{6}$", description=(
        "Required once the account has enrolled TOTP (POST /me/totp): the 6 digits its authenticator shows now, "
        "each code good once. A retry with the same Idempotency-Key is answered as the first request was."))


class FeesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: AssetSymbol


class RedPacketRequest(Strict):
    asset: AssetSymbol
    total: Amount
    shares: int = Field(ge=1, le=RED_PACKET_SHARES_MAX, description="1-10,000; the total must be at least one "
                                                                   "base unit per share")
    mode: Literal["random", "equal"] = Field(description="random: the double-average rule; equal: total // shares "
                                                         "each, the remainder to the last share")
    expires_in_s: int = Field(ge=1, le=RED_PACKET_EXPIRES_S_MAX, description="Seconds until what is left goes back "
                                                                             "to the sender (1-86,400)")
    pay_password: PayPassword


class PasswordChange(Strict):
    current_password: LoginPassword
    new_password: Password


class PayPasswordChange(Strict):
    current_pay_password: PayPassword
    new_pay_password: PayPassword


class PasswordReset(Strict):
    username: Username
    recovery_code: str = Field(min_length=1, max_length=64, description="One of the codes shown at registration")
    new_password: Password


class TotpEnrolRequest(Strict):
    pay_password: PayPassword


class TotpCodeRequest(Strict):
    code: str = Field(pattern=r"^[0-9]{6}$", description="The 6 digits the authenticator shows now")


class PageQuery(BaseModel):
    """A page of a newest-first list (history, deposits). Query strings carry text, so numbers are parsed
    here (lax), then bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=50, ge=1, le=200, description="Items per page")
    cursor: str | None = Field(default=None, pattern=CURSOR_PATTERN,
                               description="`next_cursor` of the previous page; omit for the newest items")

    @field_validator("limit", mode="before")
    @classmethod
    def _plain_digits(cls, value: object) -> object:
        """Python's int() takes "1_0", "+5" and " 5"; a query integer is plain digits, nothing else."""
        if isinstance(value, str) and not _QUERY_INT_RE.match(value):
            raise ValueError("must be a whole number written with digits only")
        return value

    @property
    def before(self) -> int | None:
        """Serve items with ids below this one (None: from the newest)."""
        return int(self.cursor) if self.cursor else None


# -- responses -------------------------------------------------------------------------------------


class AccountOut(Strict):
    account_id: int
    username: str
    shard: int
    deposit_address: str = Field(pattern=ADDRESS_PATTERN, description="EIP-55 deposit address of the account")


class RegisteredOut(AccountOut):
    recovery_codes: list[str] = Field(description="Ten one-time codes for POST /api/v1/password-resets. Shown this "
                                                  "once: store them offline")


class PasswordResetOut(Strict):
    recovery_codes_left: int


class SessionInfo(Strict):
    id: str = Field(description="Public id of the session (DELETE /api/v1/sessions/<id> revokes it)")
    created_at: Timestamp
    expires_at: Timestamp
    current: bool = Field(description="The session of this request")


class SessionsOut(Strict):
    sessions: list[SessionInfo]


class TotpEnrolOut(Strict):
    secret: str = Field(description="Base32 TOTP secret (30 s steps, 6 digits, SHA-1), shown once")
    otpauth_uri: str = Field(description="The same as an otpauth:// URI, for an authenticator app's QR code")


class SessionOut(Strict):
    token: str = Field(description="Opaque bearer token: send it as `Authorization: Bearer <token>`")
    expires_at: Timestamp
    device_token: str = Field(description="Keep it on this device and send it with the next logins (90 days)")


class AssetOut(Strict):
    symbol: str
    decimals: int
    contract: str | None = Field(description="ERC-20 contract (EIP-55); null for ETH")


class AssetsOut(Strict):
    assets: list[AssetOut]


class BalanceOut(Strict):
    asset: str
    available: BalanceAmount
    frozen: BalanceAmount


class BalancesOut(Strict):
    balances: list[BalanceOut]


class TransferOut(Strict):
    id: str = Field(description="Operation id, derived from the account and the Idempotency-Key")
    status: Literal["completed", "in_transit"] = Field(
        description="`in_transit`: the recipient lives on another shard and is credited shortly")


class RedPacketOut(Strict):
    id: str = Field(description="The packet's id (for GET /api/v1/red-packets/<id>, the sender's view)")
    code: str = Field(description="What claimants send (POST /api/v1/red-packets/<code>/claim): share it; it is the "
                                  "only way to claim, 160 random bits")
    status: Literal["open"]


class ClaimOut(Strict):
    red_packet_id: str
    amount: str = Field(pattern=AMOUNT_PATTERN, description="Base units this claim got (decided by the sender's "
                                                             "shard; a replay under the same Idempotency-Key answers "
                                                             "the same)")


class ClaimedShare(Strict):
    username: str
    amount: str = Field(pattern=AMOUNT_PATTERN)
    claimed_at: Timestamp


class RedPacketDetail(Strict):
    id: str
    asset: str
    total: str = Field(pattern=AMOUNT_PATTERN)
    shares: int
    mode: Literal["random", "equal"]
    claimed: list[ClaimedShare] = Field(description="In the order the claims were served")
    remaining: BalanceAmount = Field(description="Base units left in escrow (0 once claimed out or refunded)")
    refunded: BalanceAmount = Field(description="Base units returned to the sender at expiry")
    status: Literal["open", "claimed_out", "expired"]
    expires_at: Timestamp


class HistoryEntry(Strict):
    id: str = Field(description="Entry id, unique per account; newer entries have larger ids")
    op_id: str
    kind: str = Field(description="Operation kind: transfer, xcredit (incoming transfer from another shard), "
                                  "xreturn (a transfer coming back, refused by its recipient's shard), "
                                  "credit (deposit), debit, withdraw (frozen for a withdrawal), w.reject / w.cancel (unfrozen), "
                                  "w.settle (sent on chain), red_packet (sent), "
                                  "red_packet_claim (claimed), red_packet_refund (the rest back at expiry), ...")
    asset: str
    amount: Annotated[str, Field(pattern=SIGNED_AMOUNT_PATTERN,
                                 description="Signed base units: negative when money left this bucket")]
    bucket: Literal["available", "frozen"]
    counterparty: str | None = Field(description="Username of the other account of a transfer, else null")
    created_at: Timestamp
    status: Literal["completed", "in_transit", "returned"] | None = Field(default=None, description=(
        "Of an outgoing transfer: `completed` (the recipient is credited), `in_transit` (on its way to another "
        "shard), `returned` (the recipient's shard refused it for good and the money came back: see the "
        "`xreturn` entry); null for other entries"))


class HistoryPage(Strict):
    entries: list[HistoryEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end")


DepositStatus = Literal["pending", "confirmed", "orphaned", "reorged_after_credit", "below_minimum",
                        "credit_failed"]


class DepositOut(Strict):
    id: str = Field(description="Deposit id; newer deposits have larger ids")
    asset: str
    amount: str = Field(pattern=AMOUNT_PATTERN, description="Base units as a string of digits")
    tx_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    log_index: int = Field(ge=-1, description="Position of the token Transfer log in its block; -1 for ETH")
    block_number: int
    confirmations: int = Field(ge=0, description="Blocks on top of the deposit's block, itself included; 0 "
                                                 "once its block left the chain")
    status: DepositStatus = Field(description="pending → confirmed (credited); orphaned (its block left the "
                                              "chain before crediting; pending again if the transfer reappears); "
                                              "reorged_after_credit (credited, then reorged out: an operator "
                                              "reviews it); below_minimum (recorded, not credited); credit_failed "
                                              "(the credit was refused: an operator reviews it)")


class DepositsPage(Strict):
    deposits: list[DepositOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end")


class WithdrawalAccepted(Strict):
    id: str = Field(description="The withdrawal's id")
    status: Literal["reviewing", "approved"]
    fee: str = Field(pattern=r"^[0-9]{1,65}$", description="Charged on top of the amount, in the asset's base units")


class WithdrawalOut(Strict):
    id: str
    asset: str
    to_address: str
    amount: str
    fee: str
    speed: Speed
    status: WithdrawalStatus
    tx_hash: str | None = Field(description="The winning transaction once settled, else the newest attempt's")
    hashes: list[str] = Field(description="Every transaction signed for it, oldest first (replacements included)")
    confirmations: int = Field(ge=0, description="Blocks on top of the block holding it, itself included")
    needs_operator: bool
    created_at: Timestamp
    updated_at: Timestamp


class WithdrawalsPage(Strict):
    withdrawals: list[WithdrawalOut]
    next_cursor: str | None


class FeeQuotesOut(Strict):
    asset: str
    fees: dict[Speed, str] = Field(description="The fee per speed, in the asset's base units")


class CancelledOut(Strict):
    id: str
    status: Literal["cancelled"]


class FieldError(Strict):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code")
    errors: list[FieldError] | None = Field(default=None, description="Per-field validation errors")


class Health(Strict):
    status: Literal["ok"]


class ClusterMember(Strict):
    process: str
    roles: list[str]
    shards: list[int] = Field(description="the shards this member holds now (transrv hosts)")
    ops_url: str


class Readiness(Strict):
    status: Literal["ready"]
    checks: dict[str, bool]
    warnings: list[str] = Field(default_factory=list, description=(
        "What does not stop the service but must be fixed: a chain node that exposes keys or admin methods"))
    cluster: list[ClusterMember] | None = Field(default=None, description=(
        "Cluster mode with etcd: the members registered there and the shards each holds"))


# -- proof of reserves (web/reserves.py) -----------------------------------------------------------------------


class ReserveQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: AssetSymbol


class ReserveAddressQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=100, ge=1, le=500, description="Addresses per page")
    after: int | None = Field(default=None, ge=0, le=2**62, description="`next_after` of the previous page")


class ReserveSnapshotOut(BaseModel):
    asset: str
    snapshot_id: int
    block_number: int | None
    root: str = Field(description="hex of the Merkle-sum tree's root hash")
    total: str = Field(description="the sum of every user's balance in the tree, base units")
    leaf_count: int
    created_at: int = Field(description="milliseconds since the epoch")


class ReserveWalletsOut(BaseModel):
    hot: str | None
    gas: str | None
    cold: str | None
    deposit_address_count: int


class ReservesOut(BaseModel):
    snapshots: list[ReserveSnapshotOut]
    addresses: ReserveWalletsOut
    proof_format: str


class ReserveAddressesOut(BaseModel):
    addresses: list[str]
    next_after: str | None


class ReserveProofOut(BaseModel):
    """The proof document, exactly what `wallet verify-proof FILE` checks."""

    version: int
    asset: str
    snapshot_id: int
    block_number: int | None
    root: str
    total: str
    leaf_count: int
    account_id: int
    salt: str = Field(description="hex of the caller's own 32-byte salt in this snapshot")
    balance: str
    index: int = Field(description="the leaf's position: bit k says whether path[k] sits on the left (1)")
    path: list[list[str]] = Field(description="siblings from the leaf up: [base64url hash, sum]")
