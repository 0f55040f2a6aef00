"""
Run the Langfuse and Stripe emulators as standalone servers.

    python -m billing.emulators [--langfuse-port 8010] [--stripe-port 8011] ...

A seeded scenario (``billing.emulators.scenario``) is loaded into the Langfuse
emulator, and the URLs, every tenant's Langfuse key pair and the Stripe API
key are printed, so that a local app or a benchmark can be pointed at them.
Both emulators serve until Ctrl-C (or SIGTERM). Nothing here needs Django.

``start_emulators`` does the start-up without blocking, for tests.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence

from billing.emulators.base import Emulator, EmulatorServer, Faults
from billing.emulators.langfuse import LangfuseEmulator
from billing.emulators.scenario import Scenario, generate_scenario
from billing.emulators.stripe import DEFAULT_API_KEY, StripeEmulator

DEFAULT_HOST = "127.0.0.1"
DEFAULT_LANGFUSE_PORT = 8010
DEFAULT_STRIPE_PORT = 8011


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # Written this way round so that NaN is rejected too.
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser; its defaults are the documented ones."""
    parser = argparse.ArgumentParser(
        prog="python -m billing.emulators",
        description=(
            "Serve the Langfuse and Stripe emulators, with a seeded scenario "
            "of tenants loaded into Langfuse, until Ctrl-C."
        ),
    )
    servers = parser.add_argument_group("servers")
    servers.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: %(default)s)",
    )
    servers.add_argument(
        "--langfuse-port",
        type=_port,
        default=DEFAULT_LANGFUSE_PORT,
        help="port of the Langfuse emulator, 0 for a free one (default: %(default)s)",
    )
    servers.add_argument(
        "--stripe-port",
        type=_port,
        default=DEFAULT_STRIPE_PORT,
        help="port of the Stripe emulator, 0 for a free one (default: %(default)s)",
    )
    servers.add_argument(
        "--stripe-key",
        default=DEFAULT_API_KEY,
        help="the Stripe API key accepted (default: %(default)s)",
    )

    scenario = parser.add_argument_group("scenario")
    scenario.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the scenario and the faults (default: %(default)s)",
    )
    scenario.add_argument(
        "--tenants",
        type=_positive_int,
        default=3,
        help="number of tenants (default: %(default)s)",
    )
    scenario.add_argument(
        "--traces",
        type=_positive_int,
        default=200,
        help="traces per tenant (default: %(default)s)",
    )
    scenario.add_argument(
        "--days",
        type=_positive_int,
        default=14,
        help="UTC days of history, ending now (default: %(default)s)",
    )

    limits = parser.add_argument_group("rate limits and faults")
    limits.add_argument(
        "--langfuse-rate-limit",
        type=_positive_int,
        default=None,
        metavar="PER_MINUTE",
        help="Langfuse requests per public key per minute (default: no limit)",
    )
    limits.add_argument(
        "--stripe-rate-limit",
        type=_positive_int,
        default=None,
        metavar="PER_MINUTE",
        help="Stripe requests per API key per minute (default: no limit)",
    )
    for name, what in [
        ("429", "answered with a 429"),
        ("5xx", "answered with a 500 or 503"),
        ("reset", "whose connection is reset"),
        ("slow", "delayed by half a second"),
    ]:
        limits.add_argument(
            f"--fault-{name}",
            type=_fraction,
            default=0.0,
            metavar="FRACTION",
            help=f"fraction of requests to either emulator {what} (default: 0)",
        )
    limits.add_argument(
        "--fault-malformed",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="fraction of Langfuse observations served corrupted (default: 0)",
    )
    return parser


def _faults(args: argparse.Namespace, *, malformed: float = 0.0) -> Faults:
    return Faults(
        rate_429=args.fault_429,
        rate_5xx=args.fault_5xx,
        rate_reset=args.fault_reset,
        rate_slow=args.fault_slow,
        rate_malformed=malformed,
        seed=args.seed,
    )


def _serve(emulator: Emulator, name: str, host: str, port: int) -> EmulatorServer:
    try:
        return EmulatorServer(emulator, host, port).start()
    except OSError as exc:
        # The bare "Address already in use" does not say which port.
        raise OSError(
            exc.errno,
            f"the {name} emulator cannot listen on {host}:{port}: "
            f"{exc.strerror or exc}",
        ) from exc


def start_emulators(
    args: argparse.Namespace,
) -> tuple[EmulatorServer, EmulatorServer, Scenario]:
    """
    Generate the scenario, load it into a Langfuse emulator and start both
    emulators on threads; return (Langfuse server, Stripe server, scenario).

    ``args`` comes from ``build_parser()``. The caller stops the servers.
    Raise ValueError when the scenario cannot be generated from the options
    and OSError when a port cannot be bound (nothing is left running then).
    """
    scenario = generate_scenario(
        seed=args.seed,
        tenants=args.tenants,
        traces_per_tenant=args.traces,
        days=args.days,
    )
    langfuse = LangfuseEmulator(
        rate_limit_per_minute=args.langfuse_rate_limit,
        faults=_faults(args, malformed=args.fault_malformed),
    )
    scenario.load_into(langfuse)
    # Stripe has no malformed responses: only the transport-level faults.
    stripe = StripeEmulator(
        api_keys=(args.stripe_key,),
        rate_limit_per_minute=args.stripe_rate_limit,
        faults=_faults(args),
    )
    langfuse_server = _serve(langfuse, "Langfuse", args.host, args.langfuse_port)
    try:
        stripe_server = _serve(stripe, "Stripe", args.host, args.stripe_port)
    except BaseException:
        langfuse_server.stop()
        raise
    return langfuse_server, stripe_server, scenario


def describe(
    langfuse_server: EmulatorServer,
    stripe_server: EmulatorServer,
    scenario: Scenario,
    args: argparse.Namespace,
) -> str:
    """The start-up banner: where the emulators are and how to log in."""
    lines = [
        f"Langfuse emulator  {langfuse_server.url}",
        f"Stripe emulator    {stripe_server.url}",
        f"Stripe API key     {args.stripe_key}",
        "",
        f"Scenario: seed {scenario.seed}, {len(scenario.tenants)} tenant(s) with "
        f"{args.traces} traces each over {scenario.days} day(s) up to "
        f"{scenario.now.isoformat().replace('+00:00', 'Z')}",
    ]
    slug_width = max(len("tenant"), *(len(t.slug) for t in scenario.tenants))
    key_width = max(len(t.public_key) for t in scenario.tenants)
    lines.append(f"  {'tenant':<{slug_width}}  {'public key':<{key_width}}  secret key")
    for tenant in scenario.tenants:
        lines.append(
            f"  {tenant.slug:<{slug_width}}  {tenant.public_key:<{key_width}}  "
            f"{tenant.secret_key}"
        )
    limits = [
        f"{name} {limit}/min per key"
        for name, limit in [
            ("Langfuse", args.langfuse_rate_limit),
            ("Stripe", args.stripe_rate_limit),
        ]
        if limit is not None
    ]
    if limits:
        lines += ["", "Rate limits: " + ", ".join(limits)]
    faults = [
        f"{name} {rate:g}"
        for name, rate in [
            ("429", args.fault_429),
            ("5xx", args.fault_5xx),
            ("reset", args.fault_reset),
            ("slow", args.fault_slow),
            ("malformed (Langfuse)", args.fault_malformed),
        ]
        if rate
    ]
    if faults:
        lines += ["", "Faults: " + ", ".join(faults)]
    lines += ["", "Serving until Ctrl-C."]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start the emulators, print the banner and serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        langfuse_server, stripe_server, scenario = start_emulators(args)
    except ValueError as exc:
        # The scenario's own checks, e.g. too few traces for the days asked.
        parser.error(str(exc))
    except OSError as exc:
        print(f"{parser.prog}: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    # SIGTERM (docker stop, kill) should shut down as cleanly as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(describe(langfuse_server, stripe_server, scenario, args), flush=True)
        # sleep, unlike a bare Event.wait(), is interruptible on every platform.
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stripe_server.stop()
        langfuse_server.stop()
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
