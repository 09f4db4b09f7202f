"""schemathesis hooks for tests/admin_api.rs (loaded through SCHEMATHESIS_HOOKS).

schemathesis percent-decodes a generated path parameter before it quotes it
(`quote_all` in its transport/serialization.py: "unquote first to keep
quoting idempotent"), so a generated id holding a literal `%xx` reaches the
server as a different, shorter id. A CI run generated "æXÀ%" followed by 254
"f"s (258 characters, past the id's maxLength of 256) and sent "æXÀ\ufffd"
followed by 252 "f"s (256 characters: "%ff" became one replacement
character); the gateway rightly accepted it, and schemathesis reported a
schema-violating request accepted.

So a case generated to have invalid path parameters is dropped when what
it would send is valid after all: every path parameter, percent-decoded as
the server decodes it, satisfies its schema. Nothing else is filtered (a
value that does not decode to UTF-8 stays: the server must refuse it). What
the gateway does with `%` and lengths in ids is asserted in
tests/admin_api.rs (`client_ids_on_the_wire`).
"""

from urllib.parse import unquote

import jsonschema_rs
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode

_validators = {}


def _valid(schema, value):
    key = repr(schema)
    if key not in _validators:
        _validators[key] = jsonschema_rs.validator_for(schema)
    return _validators[key].is_valid(value)


@schemathesis.hook
def filter_case(context, case):
    meta = case.meta
    info = meta.components.get(ParameterLocation.PATH) if meta is not None else None
    if info is None or info.mode != GenerationMode.NEGATIVE:
        return True
    params = case.path_parameters or {}
    for p in context.operation.path_parameters:
        value = params.get(p.name)
        schema = (p.definition or {}).get("schema")
        if not isinstance(value, str) or schema is None:
            return True
        try:
            sent = unquote(value, errors="strict")
        except UnicodeDecodeError:
            return True
        if not _valid(schema, sent):
            return True
    # Every path parameter is valid as sent: not a negative case.
    return False
