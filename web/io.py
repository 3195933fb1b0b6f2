"""Reading requests into typed models and writing typed responses."""

from __future__ import annotations

from typing import Callable, TypeVar

import json

import flask
import pydantic
from werkzeug.exceptions import RequestEntityTooLarge

from web.errors import DuplicateKey, RequestInvalid, UnsupportedMediaType
from core.limits import BODY_MAX_BYTES

M = TypeVar("M", bound=pydantic.BaseModel)
T = TypeVar("T")

# Flask's limit is one byte more: a chunked body (no Content-Length) is cut at the limit without an error,
# so reading one byte past BODY_MAX_BYTES is how an oversized stream is told from one that fits.
READ_LIMIT_BYTES = BODY_MAX_BYTES + 1


def parse_body(model: type[M]) -> M:
    """The JSON body as `model`. Checks the media type before reading; more than BODY_MAX_BYTES is a 413."""
    request = flask.request
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    raw = request.get_data(cache=False)
    if len(raw) > BODY_MAX_BYTES:
        raise RequestEntityTooLarge()
    try:
        value = model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        raise RequestInvalid.from_pydantic(exc) from None
    # JSON parsers disagree on a repeated key (pydantic keeps the last, others the first): a body that means
    # two things is refused rather than read one way here and another way by whoever logged or checked it.
    json.loads(raw, object_pairs_hook=_refuse_repeated_keys)
    return value


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise DuplicateKey(f"a key appears more than once in an object: {', '.join(k[:64] for k in repeated[:5])}")
    return dict(pairs)


def parse_query(model: type[M]) -> M:
    args = flask.request.args
    if any(len(args.getlist(name)) > 1 for name in args):
        raise RequestInvalid("each query parameter may be given once", [])
    try:
        return model.model_validate(args.to_dict())
    except pydantic.ValidationError as exc:
        raise RequestInvalid.from_pydantic(exc) from None


def respond(body: pydantic.BaseModel, status: int = 200) -> flask.Response:
    return flask.Response(body.model_dump_json(), status=status, mimetype="application/json")


def paginate(items: list[T], limit: int, id_of: Callable[[T], int]) -> tuple[list[T], str | None]:
    """A page out of `items` read newest first with one item more than `limit` (that one only tells that
    older items exist), and the cursor of the next page: the id of the page's last item, None at the end."""
    page = items[:limit]
    return page, str(id_of(page[-1])) if len(items) > limit else None
