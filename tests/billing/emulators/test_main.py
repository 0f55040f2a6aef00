"""
Tests of ``python -m billing.emulators``: the start-up in-process on free
ports, driven by the real ``langfuse`` and ``stripe`` clients, and the module
run as a program.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from langfuse.api import LangfuseAPI
from langfuse.api.core.api_error import ApiError

from billing.emulators.__main__ import build_parser, main, start_emulators
from billing.emulators.base import EmulatorServer
from billing.emulators.scenario import Scenario

REPO_ROOT = Path(__file__).resolve().parents[3]
NO_RETRY: Any = {"max_retries": 0}
# Small enough to load in a few milliseconds, big enough for the anomalies.
SMALL = ["--tenants", "2", "--traces", "60", "--days", "7"]


@contextmanager
def started(
    *options: str,
) -> Iterator[tuple[EmulatorServer, EmulatorServer, Scenario]]:
    args = build_parser().parse_args(
        ["--langfuse-port", "0", "--stripe-port", "0", *SMALL, *options]
    )
    langfuse_server, stripe_server, scenario = start_emulators(args)
    try:
        yield langfuse_server, stripe_server, scenario
    finally:
        stripe_server.stop()
        langfuse_server.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def langfuse_client(
    server: EmulatorServer, scenario: Scenario, http: httpx.Client
) -> LangfuseAPI:
    tenant = scenario.tenants[0]
    return LangfuseAPI(
        base_url=server.url,
        username=tenant.public_key,
        password=tenant.secret_key,
        httpx_client=http,
    )


def stripe_client(server: EmulatorServer, api_key: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key, base_addresses={"api": server.url}, max_network_retries=0
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_defaults_are_the_documented_ones():
    args = build_parser().parse_args([])

    assert vars(args) == {
        "host": "127.0.0.1",
        "langfuse_port": 8010,
        "stripe_port": 8011,
        "stripe_key": "sk_test_emulator",
        "seed": 42,
        "tenants": 3,
        "traces": 200,
        "days": 14,
        "langfuse_rate_limit": None,
        "stripe_rate_limit": None,
        "fault_429": 0.0,
        "fault_5xx": 0.0,
        "fault_reset": 0.0,
        "fault_slow": 0.0,
        "fault_malformed": 0.0,
    }


@pytest.mark.parametrize(
    "option",
    [
        ["--fault-5xx", "1.5"],
        ["--fault-reset", "nan"],
        ["--tenants", "0"],
        ["--langfuse-rate-limit", "0"],
        ["--stripe-port", "70000"],
    ],
)
def test_out_of_range_options_are_usage_errors(option, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(option)

    assert caught.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_started_emulators_serve_the_scenario_to_the_real_clients(http):
    with started() as (langfuse_server, stripe_server, scenario):
        tenant = scenario.tenants[0]
        api = langfuse_client(langfuse_server, scenario, http)
        health = api.health.health(request_options=NO_RETRY)
        page = api.observations.get_many(limit=10, request_options=NO_RETRY)
        client = stripe_client(stripe_server, "sk_test_emulator")
        customer = client.v1.customers.create({"name": tenant.name})
        listed = client.v1.customers.list()

    ids = {o["id"] for o in scenario.iter_observations(tenant)}
    assert len(scenario.tenants) == 2
    assert health.status == "OK"
    assert len(page.data) == 10 and page.meta.cursor is not None
    assert {item.id for item in page.data} <= ids
    assert {item.project_id for item in page.data} == {tenant.project_id}
    assert customer.id.startswith("cus_") and customer.name == tenant.name
    assert [c.id for c in listed.data] == [customer.id]


def test_options_reach_both_emulators(http):
    options = [
        "--seed",
        "5",
        "--stripe-key",
        "sk_test_other_key",
        "--langfuse-rate-limit",
        "100",
        "--stripe-rate-limit",
        "25",
        "--fault-429",
        "0.1",
        "--fault-reset",
        "0.2",
        "--fault-slow",
        "0.3",
        "--fault-malformed",
        "0.4",
    ]
    with started(*options) as (langfuse_server, stripe_server, scenario):
        langfuse = langfuse_server.emulator
        stripe_emulator = stripe_server.emulator

    assert scenario.seed == 5
    assert langfuse.rate_limiter.per_minute == 100
    assert stripe_emulator.rate_limiter.per_minute == 25
    assert stripe_emulator.api_keys == ("sk_test_other_key",)
    rates = ("rate_429", "rate_5xx", "rate_reset", "rate_slow", "rate_malformed")
    assert [getattr(langfuse.faults, rate) for rate in rates] == [
        0.1,
        0.0,
        0.2,
        0.3,
        0.4,
    ]
    # Nothing of Stripe's can be malformed.
    assert [getattr(stripe_emulator.faults, rate) for rate in rates] == [
        0.1,
        0.0,
        0.2,
        0.3,
        0.0,
    ]
    assert langfuse.faults is not stripe_emulator.faults


def test_fault_option_makes_both_emulators_fail(http):
    with started("--fault-5xx", "1") as (langfuse_server, stripe_server, scenario):
        api = langfuse_client(langfuse_server, scenario, http)
        with pytest.raises(ApiError) as langfuse_error:
            api.observations.get_many(request_options=NO_RETRY)
        with pytest.raises(stripe.APIError) as stripe_error:
            stripe_client(stripe_server, "sk_test_emulator").v1.customers.create()

    assert langfuse_error.value.status_code == 503
    assert stripe_error.value.http_status in (500, 503)


def test_a_taken_port_fails_cleanly(capsys):
    langfuse_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stripe_port = taken.getsockname()[1]

        code = main(
            [
                "--langfuse-port",
                str(langfuse_port),
                "--stripe-port",
                str(stripe_port),
                *SMALL,
            ]
        )

    assert code == 1
    assert f"Stripe emulator cannot listen on 127.0.0.1:{stripe_port}" in (
        capsys.readouterr().err
    )
    # The Langfuse server, already started, was stopped and its port freed.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", langfuse_port))


def test_help_exits_zero():
    result = subprocess.run(
        [sys.executable, "-m", "billing.emulators", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    assert "--langfuse-port" in result.stdout and "--fault-malformed" in result.stdout


def test_runs_without_django():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, billing.emulators.__main__; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'django'); "
            "assert not loaded, loaded",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr


# A shell without job control starts background jobs with SIGINT ignored, and
# a child inherits that; this wrapper gives the module the handler a terminal's
# Ctrl-C expects, whoever started the test run.
RUN_WITH_CTRL_C = (
    "import runpy, signal; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('billing.emulators', run_name='__main__', alter_sys=True)"
)


@pytest.mark.parametrize(
    ("command", "stop_signal"),
    [
        (["-c", RUN_WITH_CTRL_C], signal.SIGINT),
        (["-m", "billing.emulators"], signal.SIGTERM),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_module_serves_until_stopped(command, stop_signal):
    process = subprocess.Popen(  # noqa: S603 - our interpreter, our arguments
        [
            sys.executable,
            *command,
            "--langfuse-port",
            "0",
            "--stripe-port",
            "0",
            *SMALL,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Should start-up hang, the kill ends readline() with EOF.
    watchdog = threading.Timer(20, process.kill)
    watchdog.start()
    try:
        banner = []
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Serving until Ctrl-C"):
                break
        text = "".join(banner)
        urls = dict(
            re.findall(r"^(Langfuse|Stripe) emulator\s+(http://\S+)$", text, re.M)
        )
        health = httpx.get(urls["Langfuse"] + "/api/public/health", timeout=5)
        customers = httpx.get(
            urls["Stripe"] + "/v1/customers",
            headers={"Authorization": "Bearer sk_test_emulator"},
            timeout=5,
        )
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=10)
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()

    assert health.json()["status"] == "OK"
    assert customers.json()["data"] == []
    assert "Stripe API key     sk_test_emulator" in text
    assert re.search(r"^  acme\s+pk-lf-acme-\w+\s+sk-lf-\w+$", text, re.M)
    assert re.search(r"^  globex\s+pk-lf-globex-\w+\s+sk-lf-\w+$", text, re.M)
    assert process.returncode == 0, err
    assert out.strip() == "Stopped." and err == ""
