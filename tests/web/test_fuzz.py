"""Property-based fuzzing of the HTTP API against its own OpenAPI document (schemathesis): valid and
invalid requests to every operation, with a real bearer token and a funded account. No request may
get a 5xx, every response must match the document (status, content type, headers, body schema), and
the ledger must pass the audit afterwards.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import hypothesis
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, ignored_auth, negative_data_rejection, response_headers_conformance,
    response_schema_conformance, status_code_conformance, unsupported_method,
)

from tests.web.conftest import PAY_PASSWORD
from app.audit import run_audit
from web.security import Limit, Limits

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth, unsupported_method]
# Bounded so the whole fuzz takes ~30 s on 2 busy cores: registrations cost two argon2 hashes each.
EXAMPLES = {"register": 15, "login": 15, "create_transfer": 100}
EXAMPLES_DEFAULT = 20
RECIPIENTS = ("bob", "bob", "leaver", "alice", "nobody")  # mostly real; sometimes oneself or nobody


def with_real_credentials(strategy: st.SearchStrategy, mode: GenerationMode) -> st.SearchStrategy:
    """Half of the valid transfer bodies get the right pay password, a known asset and a real recipient
    most of the time, so the fuzzer reaches the shard (random amounts and keys against a funded account)
    and not only the validation layers."""
    if mode is not GenerationMode.POSITIVE:
        return strategy

    def patch(args: tuple[Any, bool, str]) -> Any:
        case, real, recipient = args
        if real and isinstance(case.body, dict):
            case.body = {**case.body, "pay_password": PAY_PASSWORD, "to_username": recipient, "asset": "ETH"}
        return case

    return st.tuples(strategy, st.booleans(), st.sampled_from(RECIPIENTS)).map(patch)


def fuzz(strategy: st.SearchStrategy, examples: int, auth: dict[str, str], seen: collections.Counter) -> None:
    @hypothesis.given(case=strategy)
    @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    def run(case):
        # Credentials given at call time are "explicit": ignored_auth then probes without them.
        response = case.call_and_validate(headers=auth, checks=CHECKS)
        seen[(case.operation.definition.raw["operationId"], response.status_code)] += 1

    run()


def test_every_operation_matches_the_document_under_fuzzing(api):
    wide_open = Limit("fuzz", 10**9, 60)  # the fuzzer fails many passwords; limits are tested elsewhere
    api.front.limits = Limits(**{attribute: dataclasses.replace(wide_open, name=name)
                                 for name, (attribute, _) in Limits().by_name().items()})
    alice = api.user("alice", funds=10**30)
    api.user("bob", funds=10)
    leaver = api.user("leaver")  # its token is the one the logout operation revokes
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api.app)
    fuzzed, seen = set(), collections.Counter()
    for operation in (result.ok() for result in schema.get_all_operations()):
        raw = operation.definition.raw
        token_owner = leaver if raw["operationId"] == "logout" else alice
        # Invalid requests need something to make invalid: parameters or a body.
        has_input = bool(raw.get("parameters") or raw.get("requestBody"))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[:2 if has_input else 1]:
            strategy = operation.as_strategy(generation_mode=mode)
            if raw["operationId"] == "create_transfer":
                strategy = with_real_credentials(strategy, mode)
            fuzz(strategy, EXAMPLES.get(raw["operationId"], EXAMPLES_DEFAULT), token_owner.auth, seen)
        fuzzed.add((operation.method.upper(), operation.path))
    documented = api.client.get("/api/v1/openapi.json").json["paths"]
    served_by_schemathesis_itself = {("GET", "/api/v1/openapi.json")}  # it loads the document, never fuzzes it
    assert fuzzed | served_by_schemathesis_itself == {
        (method.upper(), path) for path, ops in documented.items() for method in ops}
    # The fuzzer reached the money path, and money moved only as the shard allowed.
    assert seen[("create_transfer", 201)] >= 5 and seen[("create_transfer", 422)] >= 1, sorted(seen.items())
    assert run_audit().ok
