"""Settings from the environment: production is secure without any."""

import secrets
import subprocess
import sys

from billing_project.settings import BASE_DIR

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "FIELD_ENCRYPTION_KEYS": "wMAz3MGMJX9G-e2B5gW68Jn3cj8A3qj4rd6SCNL60rA=",
    "PATH": "/usr/bin:/bin",
}


def deploy_check(**environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env={**PRODUCTION, **environment},
        capture_output=True,
        text=True,
    )


def test_check_deploy_is_clean_with_debug_off_and_nothing_else_set():
    result = deploy_check()
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_plain_http_is_a_choice_the_deploy_check_warns_about():
    result = deploy_check(HTTPS="0")
    assert result.returncode != 0
    for warning in ("W004", "W008", "W012", "W016"):
        assert f"security.{warning}" in result.stderr


def test_a_proxy_header_needs_a_name_and_a_value():
    result = deploy_check(SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO")
    assert result.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER must be a header and a value" in result.stderr
    assert (
        deploy_check(SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https").returncode
        == 0
    )
