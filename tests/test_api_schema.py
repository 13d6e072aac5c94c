"""Property-based check of the whole API against its own OpenAPI document (schemathesis):
with an audit seeded, no generated request may produce a 5xx, an undocumented status code, or
a response that violates its documented schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from tests.test_api import seed

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_api_conforms_to_its_openapi(session_factory, tmp_path):
    """Every operation, a few examples each (the seeded ids make some of them hit real rows)."""
    seeded = seed(session_factory, tmp_path)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(seeded.settings, seeded.factory)
    )
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case):
            case.call_and_validate(checks=CHECKS)

        exercise()
