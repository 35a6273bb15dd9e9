"""`sfworker` commands: run, submit, simulator, demo, dlq, accounts."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from worker.accounts import ConfigError, load_accounts
from worker.client import PublishFailed
from worker.observability.logging import configure
from worker.runtime.reach import Unreachable
from worker.settings import Settings

EXIT_CONFIG = 2


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SFWORKER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"bad settings: {problems}") from None


def _cmd_run(_args: argparse.Namespace) -> int:
    from worker.app import Worker

    settings = _settings()
    configure(settings.log_level, settings.log_format)
    worker = Worker(settings)
    try:
        return asyncio.run(worker.run_until_stopped())
    except ConnectionError as exc:
        print(f"sfworker: {exc}", file=sys.stderr)
        return 1


def _cmd_simulator(args: argparse.Namespace) -> int:
    try:
        from sfsim import run_simulator
    except ImportError:
        print(SIMULATOR_MISSING, file=sys.stderr)
        return 2

    configure("INFO", "text")
    run_simulator(args.host, args.port)
    return 0


SIMULATOR_MISSING = (
    "sfworker: the Salesforce simulator is not installed here (it is a development tool, not part "
    "of the worker): from a checkout, `pip install -e ./simulator` or run ./scripts/demo"
)


def _parse_pair(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    if isinstance(value, list | dict):
        value = raw
    return name, value


def _job_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        try:
            data: Any = orjson.loads(Path(args.file).read_bytes())
        except OSError as exc:
            raise ConfigError(f"{args.file}: cannot read: {exc.strerror or 'error'}") from None
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{args.file}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{args.file}: a job must be a JSON object")
        job: dict[str, Any] = data
    else:
        if not args.operation:
            raise ConfigError("give --file JOB.json or --operation with its fields")
        job = {"v": 1, "operation": args.operation}
        for key in ("soql", "sosl", "object", "id", "external_id_field", "external_id"):
            value = getattr(args, key)
            if value is not None:
                job[key] = value
        if args.param:
            job["params"] = dict(args.param)
        if args.field:
            job["fields"] = dict(args.field)
        if args.fields_list:
            job["fields"] = args.fields_list.split(",")
        if args.max_records is not None:
            job["max_records"] = args.max_records
    job.setdefault("v", 1)
    job.setdefault("job_id", f"submit-{uuid.uuid4().hex[:12]}")
    for key in ("account", "tenant"):
        if getattr(args, key):
            job[key] = getattr(args, key)
    if args.timeout_ms:
        job["timeout_ms"] = args.timeout_ms
    return job


def _cmd_submit(args: argparse.Namespace) -> int:
    from worker.commands.render import render_result
    from worker.commands.submit import submit_one

    settings = _settings()
    job = _job_from_args(args)
    wait = max(args.wait, job.get("timeout_ms", 8000) / 1000 + 5)
    try:
        result = asyncio.run(
            submit_one(settings, job, wait, tenant_queue=args.tenant_queue)
        ).model_dump(mode="json")
    except TimeoutError:
        print(f"sfworker: no result within {wait:.0f} s: is a worker running?", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render_result(result))
    return 0 if result.get("status") in ("ok", "no_data") else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from worker.commands.demo import run_demo
    except ImportError as exc:
        if exc.name != "sfsim":
            raise
        print(SIMULATOR_MISSING, file=sys.stderr)
        return 2

    configure("WARNING", "text")
    return asyncio.run(run_demo(args.amqp_url))


def _cmd_dlq(args: argparse.Namespace) -> int:
    from worker.commands.dlq import inspect_dead_letters

    settings = _settings()
    return asyncio.run(
        inspect_dead_letters(
            settings,
            limit=args.limit,
            requeue=args.requeue,
            force=args.force,
            force_inserts=args.force_inserts,
        )
    )


def _cmd_accounts(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.accounts_command == "check":
        return _accounts_check(settings, args)
    if args.accounts_command == "authorize":
        from worker.commands.accounts import authorize

        return authorize.run(
            settings,
            args.name,
            args.port,
            Path(args.out),
            open_browser=not args.no_browser,
            wait=args.wait,
        )
    accounts = load_accounts(
        settings.accounts_file, allow_insecure_localhost=settings.allow_insecure_localhost
    )
    for account in accounts.by_name.values():
        marks = " (default)" if account.default else ""
        print(
            f"{account.name}{marks}: {account.flow.value} -> {account.instance_url} "
            f"tenant={account.tenant or '-'} api=v{account.api_version} "
            f"max_concurrency={account.max_concurrency}"
        )
    for tenant in accounts.tenants.values():
        print(f"tenant {tenant.name}: amqp_users={','.join(sorted(tenant.amqp_users))}")
    return 0


def _accounts_check(settings: Settings, args: argparse.Namespace) -> int:
    from worker.commands.accounts import check

    accounts = load_accounts(
        settings.accounts_file, allow_insecure_localhost=settings.allow_insecure_localhost
    )
    selected = check.select(accounts, args.name)
    objects = [o.strip() for o in (args.objects or "").split(",") if o.strip()]
    reports = asyncio.run(check.check_accounts(settings, selected, objects))
    if args.json:
        sys.stdout.write(
            orjson.dumps(check.as_json(reports), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    else:
        print(check.render(reports))
    return 0 if all(r.ok for r in reports) else 1


def _add_accounts(sub: Any) -> None:
    accounts = sub.add_parser(
        "accounts", help="list the accounts file; check an account; authorize one"
    )
    commands = accounts.add_subparsers(dest="accounts_command")
    check = commands.add_parser(
        "check", help="get a token for each account and show its user, org, API usage, access"
    )
    check.add_argument("name", nargs="?", help="one account (default: every account)")
    check.add_argument("--objects", help="comma-separated objects to describe, e.g. Contact,Case")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    auth = commands.add_parser(
        "authorize", help="web-server flow: obtain a refresh token for a refresh_token account"
    )
    auth.add_argument("name", help="the account (flow refresh_token)")
    auth.add_argument(
        "--port", type=int, default=1717, help="callback port on localhost (default 1717)"
    )
    auth.add_argument("--out", required=True, help="file to write the refresh token to (0600)")
    auth.add_argument("--no-browser", action="store_true", help="only print the URL")
    auth.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the callback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfworker", description="Runs contact-center Salesforce blocks from RabbitMQ."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="consume block jobs (settings from SFWORKER_* env vars)")

    sim = sub.add_parser("simulator", help="run the Salesforce simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)

    submit = sub.add_parser("submit", help="publish one job and print its result")
    submit.add_argument("--file", help="a JSON file holding the job")
    submit.add_argument(
        "--operation", choices=["search", "get", "insert", "update", "upsert", "delete"]
    )
    submit.add_argument("--soql")
    submit.add_argument("--sosl")
    submit.add_argument("--object")
    submit.add_argument("--id")
    submit.add_argument("--external-id-field", dest="external_id_field")
    submit.add_argument("--external-id", dest="external_id")
    submit.add_argument("--param", action="append", type=_parse_pair, help="NAME=VALUE")
    submit.add_argument("--field", action="append", type=_parse_pair, help="NAME=VALUE")
    submit.add_argument("--fields", dest="fields_list", help="get: comma-separated field names")
    submit.add_argument("--max-records", dest="max_records", type=int)
    submit.add_argument("--account")
    submit.add_argument("--tenant")
    submit.add_argument("--timeout-ms", dest="timeout_ms", type=int)
    submit.add_argument("--wait", type=float, default=15.0, help="seconds to wait for a result")
    submit.add_argument("--json", action="store_true", help="print the raw result JSON")
    submit.add_argument(
        "--tenant-queue",
        action="store_true",
        help="publish to the tenant's own queue (SFWORKER_TENANT_EXCHANGE, strict tenant mode)",
    )

    demo = sub.add_parser("demo", help="simulator + worker + one job of each operation")
    demo.add_argument(
        "--amqp-url",
        default=None,
        help="RabbitMQ URL (default: SFWORKER_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/)",
    )

    dlq = sub.add_parser("dlq", help="show (and optionally requeue) dead-lettered jobs")
    dlq.add_argument("--limit", type=int, default=20)
    dlq.add_argument("--requeue", action="store_true", help="send them back to the queue")
    dlq.add_argument(
        "--force",
        action="store_true",
        help="with --requeue: also jobs past their own budget, with a fresh one",
    )
    dlq.add_argument(
        "--force-inserts",
        action="store_true",
        help="with --force: inserts past their budget too (the record may exist already)",
    )

    _add_accounts(sub)
    return parser


_COMMANDS = {
    "run": _cmd_run,
    "simulator": _cmd_simulator,
    "submit": _cmd_submit,
    "demo": _cmd_demo,
    "dlq": _cmd_dlq,
    "accounts": _cmd_accounts,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"sfworker: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (Unreachable, PublishFailed) as exc:
        print(f"sfworker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
