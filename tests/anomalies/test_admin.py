import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "name",
    [
        "admin:anomalies_incident_changelist",
        "admin:anomalies_costanomaly_changelist",
        "admin:billing_costsummary_changelist",
        "admin:billing_analyticsrun_changelist",
        "admin:billing_usagerecord_changelist",
        "admin:billing_stripereport_changelist",
        "admin:billing_syncrun_changelist",
    ],
)
def test_operator_pages_render(client, superuser, name):
    client.force_login(superuser)
    assert client.get(reverse(name)).status_code == 200
