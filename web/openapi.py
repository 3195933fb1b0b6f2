"""The OpenAPI 3.1 document, generated from the pydantic models (web/schemas.py) and the table of
operations below, served at GET /api/v1/openapi.json. The tests fuzz the server against it, so every
status an operation can answer is listed here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flask
import pydantic
from pydantic.json_schema import models_json_schema

from web import schemas as s
from web.admin_api import DepositQuery, LogQuery, DeliveryQuery, PauseBody, ReasonBody, SweepQuery
from web.admin_api import ListQuery as AdminListQuery
from web.auth import public
from web.errors import PROBLEM_MIMETYPE
from web.idempotency import HEADER as IDEMPOTENCY_HEADER
from web.idempotency import KEY_PATTERN

bp = flask.Blueprint("openapi", __name__, url_prefix="/api/v1")

REF = "#/components/schemas/{model}"

# Problem statuses shared by many operations, with the codes each can carry.
BAD_BODY = {400: "validation_error, malformed_json", 413: "payload_too_large",
            415: "unsupported_media_type"}
NEEDS_AUTH = {401: "unauthorized (no or malformed Authorization), invalid_token (unknown or revoked), "
                   "token_expired"}
# Any API operation may find the database, Redis or an actor not answering in time.
DEPENDENCY_DOWN = ("service_unavailable: the database, Redis or the owning actor did not answer in time; retry "
                   "(with the same Idempotency-Key for money)")


@dataclasses.dataclass(frozen=True)
class Op:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok_status: int
    ok_model: type[pydantic.BaseModel] | None
    problems: dict[int, str]
    request: type[pydantic.BaseModel] | None = None
    public: bool = False
    parameters: tuple[dict[str, Any], ...] = ()
    ok_content_type: str = "application/json"
    description: str = ""


IDEMPOTENCY_PARAMETER = {
    "name": IDEMPOTENCY_HEADER, "in": "header", "required": True,
    "description": "A unique value per operation, reused when retrying it. Same key and body: the first "
                   "response again, a refusal (404, 422, 423, unknown_asset, self_transfer) included; a 503 "
                   "decided nothing and may be retried. Same key, other body: 422 idempotency_key_reused.",
    "schema": {"type": "string", "pattern": KEY_PATTERN, "minLength": 1, "maxLength": 128},
}


def _query_parameters(model: type[pydantic.BaseModel]) -> tuple[dict[str, Any], ...]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        if "anyOf" in prop:  # `str | None` with a default of None: the parameter is simply optional
            prop = {**next(p for p in prop.pop("anyOf") if p.get("type") != "null"), **prop}
            prop.pop("default", None)
        params.append({"name": name, "in": "query", "required": name in required,
                       "description": description, "schema": prop})
    return tuple(params)


WITHDRAWAL_ID = {"name": "withdrawal_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 2**62}}
ACCOUNT_ID = {"name": "account_id", "in": "path", "required": True,
              "schema": {"type": "integer", "minimum": 1, "maximum": 2**62}}
STAFF = {401: "unauthorized (no admin token), invalid_token (unknown, or a user's token)",
         403: "forbidden (the role may not do this)"}
STAFF_SECURITY = ({"name": "Authorization", "in": "header", "required": True,
                   "description": "Bearer <admin token> from `wallet admin create`", "schema": {"type": "string"}},)


def _staff(method: str, path: str, operation_id: str, summary: str, problems: dict[int, str] | None = None,
           request: type[pydantic.BaseModel] | None = None, parameters: tuple = (), description: str = "") -> Op:
    """An admin API operation: staff bearer tokens (reviewer, operator, auditor), not a user's."""
    return Op(method, "/admin/api/v1" + path, operation_id, summary, "admin", 200, None, {**STAFF, **(problems or {})},
              request=request, public=True, parameters=STAFF_SECURITY + parameters, description=description)


ADMIN_OPERATIONS = (
    _staff("get", "/withdrawals", "admin_list_withdrawals", "The review queue (any role), oldest first",
           {400: "validation_error"}, parameters=_query_parameters(AdminListQuery)),
    _staff("get", "/withdrawals/{withdrawal_id}", "admin_get_withdrawal", "A withdrawal with its attempts, "
           "approvals and staff history", {404: "unknown_withdrawal"}, parameters=(WITHDRAWAL_ID,)),
    _staff("post", "/withdrawals/{withdrawal_id}/approve", "admin_approve", "Approve (reviewer)",
           {404: "unknown_withdrawal", 409: "withdrawal_state_conflict, already_approved (four eyes: another "
                                            "reviewer must approve)"}, parameters=(WITHDRAWAL_ID,)),
    _staff("post", "/withdrawals/{withdrawal_id}/reject", "admin_reject", "Reject with a reason (reviewer): "
           "unfreezes at once", {**BAD_BODY, 404: "unknown_withdrawal", 409: "withdrawal_state_conflict"},
           request=ReasonBody, parameters=(WITHDRAWAL_ID,)),
    _staff("post", "/withdrawals/{withdrawal_id}/clear-flag", "admin_clear_flag", "Clear needs_operator with a "
           "reason (operator): the signer follows the withdrawal up again", {**BAD_BODY, 404: "unknown_withdrawal",
                                                                              409: "withdrawal_state_conflict (not flagged)"},
           request=ReasonBody, parameters=(WITHDRAWAL_ID,),
           description="Moves no money and no state: the funds stay frozen; logged in the staff log."),
    _staff("post", "/withdrawals/pause", "admin_pause", "Stop all new signing (operator)", dict(BAD_BODY),
           request=PauseBody, description="Requests still queue for review."),
    _staff("post", "/withdrawals/resume", "admin_resume", "Sign again (operator)", dict(BAD_BODY), request=PauseBody),
    _staff("get", "/reconciliation", "admin_reconciliation", "The last reconciliation: per asset, liabilities "
           "against holdings at one block, and the drift", {404: "no_reconciliation"}),
    _staff("get", "/hot-wallet", "admin_hot_wallet", "Hot wallet address, balances, next nonce, in flight",
           {503: DEPENDENCY_DOWN}),
    _staff("get", "/deposits", "admin_deposits", "Deposits by status", {400: "validation_error"},
           parameters=_query_parameters(DepositQuery)),
    _staff("get", "/sweeps", "admin_sweeps", "Treasury moves (sweeps into the hot wallet, cold moves), oldest first, "
           "with every transaction hash", {400: "validation_error"}, parameters=_query_parameters(SweepQuery)),
    _staff("post", "/sweeps/pause", "admin_pause_sweeps", "Stop new sweeps (operator); withdrawals go on",
           dict(BAD_BODY), request=PauseBody),
    _staff("post", "/sweeps/resume", "admin_resume_sweeps", "Sweep again (operator)", dict(BAD_BODY),
           request=PauseBody),
    _staff("post", "/cold/pause", "admin_pause_cold", "Stop new moves to cold storage (operator)", dict(BAD_BODY),
           request=PauseBody),
    _staff("post", "/cold/resume", "admin_resume_cold", "Move the hot wallet's surplus to cold again (operator)",
           dict(BAD_BODY), request=PauseBody),
    _staff("post", "/accounts/{account_id}/release-hold", "admin_release_hold", "Release an account's hold "
           "(operator)", {**BAD_BODY, 404: "unknown_account"}, request=ReasonBody, parameters=(ACCOUNT_ID,)),
    _staff("get", "/webhooks", "admin_webhooks", "Webhook endpoints (their secrets are never shown)"),
    _staff("get", "/webhooks/deliveries", "admin_webhook_deliveries", "The webhook delivery log, newest first",
           {400: "validation_error"}, parameters=_query_parameters(DeliveryQuery)),
    _staff("get", "/audit-log", "admin_audit_log", "The staff log, newest first", {400: "validation_error"},
           parameters=_query_parameters(LogQuery)),
)

OPERATIONS = (
    Op("post", "/api/v1/accounts", "register", "Register an account", "accounts", 201, s.RegisteredOut,
       {**BAD_BODY, 409: "username_taken", 429: "rate_limited (registrations per client address; see "
                                                 "Retry-After)",
        503: "address_pool_empty, " + DEPENDENCY_DOWN},
       request=s.RegisterRequest, public=True,
       description="Binds the account to a shard for life and gives it a deposit address of its own. "
                   "Attempts are limited per client address. The answer carries ten one-time recovery codes, "
                   "shown this once."),
    Op("post", "/api/v1/sessions", "login", "Log in: get a bearer token", "sessions", 200, s.SessionOut,
       {**BAD_BODY, 401: "invalid_credentials", 429: "rate_limited (see Retry-After)"},
       request=s.LoginRequest, public=True,
       description="Failed logins are limited per account and per client address."),
    Op("delete", "/api/v1/sessions/current", "logout", "Log out: revoke the presented token", "sessions",
       204, None, dict(NEEDS_AUTH)),
    Op("get", "/api/v1/me", "me", "The caller's account", "accounts", 200, s.AccountOut,
       {**NEEDS_AUTH, 404: "unknown_account"}),
    Op("get", "/api/v1/assets", "list_assets", "Assets handled by the service", "assets", 200, s.AssetsOut,
       dict(NEEDS_AUTH)),
    Op("get", "/api/v1/balances", "list_balances", "The caller's balances", "balances", 200, s.BalancesOut,
       dict(NEEDS_AUTH)),
    Op("post", "/api/v1/transfers", "create_transfer", "Transfer to another user", "transfers", 201,
       s.TransferOut,
       {**BAD_BODY, **NEEDS_AUTH,
        400: "validation_error, malformed_json, invalid_amount, unknown_asset, self_transfer, "
             "idempotency_key_missing, idempotency_key_invalid",
        403: "wrong_pay_password", 404: "unknown_account (no such recipient)",
        409: "operation_in_progress (a request with this Idempotency-Key is being processed)",
        422: "insufficient_funds, balance_overflow, idempotency_key_reused", 423: "account_on_hold",
        429: "rate_limited (too many wrong pay passwords; see Retry-After)"},
       request=s.TransferRequest, parameters=(IDEMPOTENCY_PARAMETER,),
       description="Moves money inside the service, without a chain transaction. A recipient on another "
                   "shard is credited shortly after (status in_transit). Needs the pay password."),
    Op("get", "/api/v1/history", "history", "The caller's journal, newest first", "history", 200,
       s.HistoryPage, {**NEEDS_AUTH, 400: "validation_error"}, parameters=_query_parameters(s.PageQuery)),
    Op("get", "/api/v1/deposits", "list_deposits", "The caller's deposits, newest first", "deposits", 200,
       s.DepositsPage, {**NEEDS_AUTH, 400: "validation_error"}, parameters=_query_parameters(s.PageQuery),
       description="Live confirmations and status of each deposit to the caller's address."),
    Op("get", "/api/v1/withdrawals/fees", "withdrawal_fees", "What a withdrawal costs now, per speed", "withdrawals",
       200, s.FeeQuotesOut, {**NEEDS_AUTH, 400: "validation_error, unknown_asset",
                             422: "fee_not_configured (a token without WALLET_WITHDRAW_TOKEN_FEES), "
                                  "withdrawals_unavailable (no chain node configured)"},
       parameters=_query_parameters(s.FeesQuery),
       description="ETH: 21,000 gas x the max fee per gas of the speed, from the node's fee history. A token: its "
                   "configured flat fee, in the token."),
    Op("post", "/api/v1/withdrawals", "request_withdrawal", "Withdraw to an address outside the service",
       "withdrawals", 202, s.WithdrawalAccepted,
       {**BAD_BODY, **NEEDS_AUTH,
        400: "validation_error, malformed_json, duplicate_key, invalid_amount, invalid_address (not EIP-55, bad "
             "checksum), zero_address, own_address (use a transfer), unknown_asset, idempotency_key_missing, "
             "idempotency_key_invalid",
        403: "wrong_pay_password, totp_required (the account enrolled TOTP: send totp_code), wrong_totp_code",
        409: "operation_in_progress (a request with this Idempotency-Key is being processed)",
        422: "insufficient_funds (amount + fee), amount_below_minimum, daily_limit_exceeded, fee_not_configured, "
             "withdrawals_unavailable, idempotency_key_reused", 423: "account_on_hold",
        429: "rate_limited (wrong pay passwords, wrong TOTP codes or refusals; see Retry-After)"},
       request=s.WithdrawalRequest, parameters=(IDEMPOTENCY_PARAMETER,),
       description="Freezes amount + fee (the fee quoted now, fixed) with the request; a reviewer approves it "
                   "(automatically below a configured amount, two reviewers above another), the signer signs and "
                   "broadcasts it, and it is confirmed after the configured confirmations."),
    Op("get", "/api/v1/withdrawals", "list_withdrawals", "The caller's withdrawals, newest first", "withdrawals",
       200, s.WithdrawalsPage, {**NEEDS_AUTH, 400: "validation_error"}, parameters=_query_parameters(s.PageQuery)),
    Op("get", "/api/v1/withdrawals/{withdrawal_id}", "get_withdrawal", "One of the caller's withdrawals",
       "withdrawals", 200, s.WithdrawalOut, {**NEEDS_AUTH, 404: "unknown_withdrawal (also another user's)"},
       parameters=(WITHDRAWAL_ID,),
       description="Every transaction signed for it (replacements too), its confirmations and needs_operator."),
    Op("post", "/api/v1/withdrawals/{withdrawal_id}/cancel", "cancel_withdrawal", "Cancel while it is reviewed",
       "withdrawals", 200, s.CancelledOut,
       {**NEEDS_AUTH, 404: "unknown_withdrawal", 409: "withdrawal_state_conflict (no longer reviewing)"},
       parameters=(WITHDRAWAL_ID,), description="Unfreezes amount + fee at once."),
    Op("get", "/api/v1/reserves", "reserves", "Proof of reserves: the newest Merkle-sum root and total per asset",
       "reserves", 200, s.ReservesOut, {503: DEPENDENCY_DOWN}, public=True,
       description="With the block height of each snapshot and the addresses the reserves sit on (hot, gas and "
                   "cold wallets; the deposit addresses at /api/v1/reserves/deposit-addresses)."),
    Op("get", "/api/v1/reserves/deposit-addresses", "reserve_deposit_addresses", "The deposit addresses, paged",
       "reserves", 200, s.ReserveAddressesOut, {400: "validation_error", 503: DEPENDENCY_DOWN}, public=True,
       parameters=_query_parameters(s.ReserveAddressQuery)),
    Op("get", "/api/v1/me/reserve-proof", "reserve_proof", "The caller's inclusion proof in the newest snapshot",
       "reserves", 200, s.ReserveProofOut,
       {**NEEDS_AUTH, 400: "validation_error, unknown_asset",
        404: "no_reserve_proof (no snapshot of the asset yet, or the caller held none of it then)"},
       parameters=_query_parameters(s.ReserveQuery),
       description="Verify it offline with `wallet verify-proof FILE --root HEX --total N` against the values "
                   "published at /api/v1/reserves."),
    *ADMIN_OPERATIONS,
    Op("post", "/api/v1/red-packets", "create_red_packet", "Send a red packet", "red-packets", 201, s.RedPacketOut,
       {**BAD_BODY, **NEEDS_AUTH,
        400: "validation_error, malformed_json, invalid_amount, invalid_red_packet (total below shares), "
             "unknown_asset, idempotency_key_missing, idempotency_key_invalid",
        403: "wrong_pay_password",
        409: "operation_in_progress (a request with this Idempotency-Key is being processed)",
        422: "insufficient_funds, balance_overflow, idempotency_key_reused", 423: "account_on_hold",
        429: "rate_limited (too many wrong pay passwords; see Retry-After)"},
       request=s.RedPacketRequest, parameters=(IDEMPOTENCY_PARAMETER,),
       description="Escrows the total from the caller's available balance and answers the code to share. What is "
                   "left at expiry goes back to the sender. Needs the pay password."),
    Op("post", "/api/v1/red-packets/{code}/claim", "claim_red_packet", "Claim a share of a red packet",
       "red-packets", 200, s.ClaimOut,
       {**NEEDS_AUTH, 400: "idempotency_key_invalid", 404: "unknown_red_packet",
        409: "already_claimed, operation_in_progress", 410: "claimed_out, expired",
        422: "idempotency_key_reused"},
       parameters=({"name": "code", "in": "path", "required": True, "schema": {"type": "string"}},
                   {**IDEMPOTENCY_PARAMETER, "required": False}),
       description="Each account claims a packet once; its own included. The amount is decided by the sender's "
                   "shard in arrival order; a claimant on another shard is credited shortly after. An optional "
                   "Idempotency-Key makes a retry answer the first claim."),
    Op("get", "/api/v1/red-packets/{packet_id}", "get_red_packet", "A red packet the caller sent", "red-packets",
       200, s.RedPacketDetail, {**NEEDS_AUTH, 404: "unknown_red_packet (none of the caller's has this id)"},
       parameters=({"name": "packet_id", "in": "path", "required": True, "schema": {"type": "string"}},)),
    Op("get", "/api/v1/sessions", "list_sessions", "The caller's live sessions", "sessions", 200, s.SessionsOut,
       dict(NEEDS_AUTH)),
    Op("delete", "/api/v1/sessions/{session_id}", "revoke_session", "Revoke one of the caller's sessions",
       "sessions", 204, None, {**NEEDS_AUTH, 404: "unknown_session"},
       parameters=({"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}},)),
    Op("post", "/api/v1/me/password", "change_password", "Change the password", "security", 204, None,
       {**BAD_BODY, **NEEDS_AUTH, 403: "wrong_password",
        429: "rate_limited (too many wrong current passwords; see Retry-After)"},
       request=s.PasswordChange, description="Needs the current password; every other session is revoked."),
    Op("post", "/api/v1/me/pay-password", "change_pay_password", "Change the pay password", "security", 204, None,
       {**BAD_BODY, **NEEDS_AUTH, 403: "wrong_pay_password",
        429: "rate_limited (too many wrong pay passwords; see Retry-After)"},
       request=s.PayPasswordChange, description="Needs the current pay password."),
    Op("post", "/api/v1/password-resets", "reset_password", "Set a new password with a recovery code",
       "security", 200, s.PasswordResetOut,
       {**BAD_BODY, 401: "invalid_recovery_code", 429: "rate_limited (see Retry-After)"},
       request=s.PasswordReset, public=True,
       description="Spends one of the recovery codes shown at registration and revokes every session. Wrong "
                   "codes are limited per username and per client address."),
    Op("post", "/api/v1/me/totp", "enrol_totp", "Start a TOTP enrolment for withdrawals", "security", 201,
       s.TotpEnrolOut,
       {**BAD_BODY, **NEEDS_AUTH, 403: "wrong_pay_password", 409: "totp_already_enabled",
        429: "rate_limited (too many wrong pay passwords; see Retry-After)"},
       request=s.TotpEnrolRequest, description="Needs the pay password. Active once confirmed with a code."),
    Op("post", "/api/v1/me/totp/confirm", "confirm_totp", "Confirm the TOTP enrolment with a code", "security",
       204, None,
       {**BAD_BODY, **NEEDS_AUTH, 403: "wrong_totp_code", 409: "totp_not_enrolled",
        429: "rate_limited (too many wrong codes; see Retry-After)"},
       request=s.TotpCodeRequest, description="From then on every withdrawal needs a current code."),
    Op("post", "/api/v1/me/totp/disable", "disable_totp", "Turn TOTP off (needs a current code)", "security", 204,
       None,
       {**BAD_BODY, **NEEDS_AUTH, 403: "wrong_totp_code", 409: "totp_not_enrolled",
        429: "rate_limited (too many wrong codes; see Retry-After)"},
       request=s.TotpCodeRequest),
    Op("get", "/api/v1/openapi.json", "openapi", "This document", "ops", 200, None, {}, public=True),
    Op("get", "/healthz", "healthz", "Liveness", "ops", 200, s.Health, {}, public=True),
    # /readyz and /metrics are served on the operations listener (WALLET_OPS_HTTP), not here.
)


def _schemas() -> dict[str, Any]:
    requests = [op.request for op in OPERATIONS if op.request is not None]
    responses = [op.ok_model for op in OPERATIONS if op.ok_model is not None] + [s.Problem]
    pairs = [(m, "validation") for m in dict.fromkeys(requests)] + \
            [(m, "serialization") for m in dict.fromkeys(responses)]
    _, top = models_json_schema(pairs, ref_template=REF)
    return top["$defs"]


def _ref(model: type[pydantic.BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(op: Op) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if op.ok_model is not None:
        ok["content"] = {op.ok_content_type: {"schema": _ref(op.ok_model)}}
    elif op.operation_id == "openapi":
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    elif op.ok_content_type == "text/plain":
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(op.ok_status): ok}
    problems = dict(op.problems)
    if op.path.startswith(("/api/v1/", "/admin/api/v1/")) and op.operation_id != "openapi":
        problems.setdefault(503, DEPENDENCY_DOWN)
    for status, codes in sorted(problems.items()):
        response: dict[str, Any] = {"description": f"Problem; code: {codes}",
                                    "content": {PROBLEM_MIMETYPE: {"schema": _ref(s.Problem)}}}
        if status == 429:
            response["headers"] = {"Retry-After": {"description": "Seconds to wait", "required": True,
                                                   "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
        responses[str(status)] = response
    body: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                            "responses": responses}
    if op.description:
        body["description"] = op.description
    if op.parameters:
        body["parameters"] = list(op.parameters)
    if op.request is not None:
        body["requestBody"] = {"required": True,
                               "content": {"application/json": {"schema": _ref(op.request)}}}
    if op.public:
        body["security"] = []
    return body


@functools.cache
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Custodial wallet HTTP API", "version": "1.0.0",
            "description": "Amounts are strings of base-unit digits (wei for ETH). Errors are RFC 9457 problem "
                           "details with a stable `code`. Every response carries X-Request-ID (sent back if the "
                           "request had a valid one). Bodies are limited to 64 KiB.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Token from POST /api/v1/sessions"}},
        },
        "security": [{"bearerAuth": []}],
    }


@bp.get("/openapi.json")
@public
def openapi():
    return flask.jsonify(document())
