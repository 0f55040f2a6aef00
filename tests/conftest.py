import django_rq
import pytest
from django.db import connection

from billing.app_role import app_role_ensure
from billing.cache_health import cache_reset
from billing.models import ModelPrice, UnitPrice
from billing.price_table import shipped_prices_insert
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytest_plugins = [
    "tests.fixtures.api",
    "tests.fixtures.langfuse",
    "tests.fixtures.stripe",
]

APP_ROLE = "billing_app_test"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # A real password hash costs about 0.5 s a user and tests nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def cache_trusted_again():
    # A test that breaks the cache pauses it for this process: not the next.
    yield
    cache_reset()


@pytest.fixture(autouse=True)
def shipped_prices(request):
    """
    The price table as migrations seed it. A transactional test's flush
    empties every table, migrated data included: seed again after one.
    """
    database = {"transactional_db", "db", "live_server"} & set(request.fixturenames)
    if not database and not request.node.get_closest_marker("django_db"):
        return
    for fixture in ("transactional_db", "live_server", "db"):
        if fixture in database:
            request.getfixturevalue(fixture)
            break
    if not ModelPrice.objects.exists():
        shipped_prices_insert(ModelPrice, UnitPrice)


@pytest.fixture
def tenant():
    return TenantFactory()


@pytest.fixture
def other_tenant():
    return TenantFactory()


@pytest.fixture
def staff_user():
    return UserFactory()


@pytest.fixture
def superuser():
    return UserFactory(is_superuser=True)


@pytest.fixture
def membership():
    return MembershipFactory


@pytest.fixture
def as_app_role(db):
    """
    Run the rest of the test's transaction as the application role.

    ``SET LOCAL ROLE`` makes the (superuser) test connection subject to RLS
    exactly as the app's own login would be, and ends with the test's
    transaction, so it never leaks into another test.
    """
    app_role_ensure(role=APP_ROLE)

    def switch():
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL ROLE {APP_ROLE}")

    return switch


@pytest.fixture
def queue():
    """The default RQ queue on the test Redis database, emptied around a test."""
    queue = django_rq.get_queue("default")
    queue.connection.flushdb()
    yield queue
    queue.connection.flushdb()
