"""The API against its own OpenAPI document, by schemathesis: for every operation, a bounded
number of generated requests (valid by the schema) must get no server error, and every answer
must be one the document declares, in the declared content type and shape.

Requests carry a read-and-generate token of a member with credits and a key for each gateway,
so writes reach the submit path; what it refuses is answered as a declared problem."""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts import ledger
from accounts.models import ApiToken, ProviderKey
from generations import providers

# Enough to walk every operation's fields each run, few enough to keep the suite quick.
EXAMPLES_PER_OPERATION = 25

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# The document is read through the real WSGI handler, as the requests are made; reading it
# needs no database.
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())
schema.config.generation.modes = [schemathesis.GenerationMode.POSITIVE]


@pytest.fixture
def wsgi_in_test_transaction(db, settings, tmp_path):
    """Requests run in this thread, inside the test's transaction: as Django's test client
    does, the handler must not close the connection after each request."""
    settings.MEDIA_ROOT = tmp_path
    signals = (request_started, request_finished)
    for signal in signals:
        signal.disconnect(close_old_connections)
    yield
    for signal in signals:
        signal.connect(close_old_connections)


@pytest.fixture
def token(wsgi_in_test_transaction, django_user_model):
    member = django_user_model.objects.create_user("fuzz", password="x" * 12)
    admin = django_user_model.objects.create_user("boss", is_staff=True, is_superuser=True)
    ledger.grant(member, 1_000_000, by=admin, reason="fuzzing")
    for provider, _name in providers.choices():
        key = ProviderKey(provider=provider, label=provider, owner=member)
        key.set_secret(f"sk-{provider}-fuzz-0001")
        if provider == "omnivideo":
            key.base_url = "https://video.example.com"
        key.save()
    return ApiToken.issue(member, name="schemathesis", scope="write", days=1)[1]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_declared_and_none_is_a_server_error(case, token):
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
