"""The ``homeserver`` command: run, generate-config, check-config, register-user."""

from __future__ import annotations

import argparse
import getpass
import logging
import logging.config
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from homeserver import __version__

logger = logging.getLogger("homeserver")


def _load(path: str) -> Any:
    from homeserver.config import ConfigError, load_config

    try:
        config, warnings = load_config(path)
    except ConfigError as e:
        print(f"Configuration error in {path}:\n{e}", file=sys.stderr)
        raise SystemExit(1) from None
    for warning in warnings:
        print(f"warning: {path}: {warning}", file=sys.stderr)
    return config


def _setup_logging(config: Any) -> None:
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    if config.log_config:
        with open(config.log_config, encoding="utf-8") as f:
            logging.config.dictConfig(yaml.safe_load(f))
    else:
        logging.basicConfig(
            level=getattr(logging, str(config.log_level).upper(), logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(config)
    from twisted.internet import reactor

    from homeserver.app import build_homeserver
    from homeserver.storage.migrations import SchemaError

    try:
        hs = build_homeserver(config, reactor)
        hs.start_listening()
    except SchemaError as e:
        logger.error("%s", e)
        return 1
    except Exception as e:  # a port in use, an unreachable database: say so plainly
        logger.error("could not start: %s", e)
        return 1
    if config.pid_file:
        with open(config.pid_file, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    client_ports = [str(listener.port) for listener in config.listeners if listener.serves("client")]
    logger.info(
        "homeserver %s for %s is running (client port %s, database %s).",
        __version__,
        config.server_name,
        ",".join(client_ports) or "none",
        hs.db.engine.describe(),
    )
    logger.info(
        "Create a first user with: homeserver register-user -c %s -u NAME -p PASSWORD --admin", args.config
    )
    reactor.run()
    if config.pid_file and os.path.exists(config.pid_file):
        os.unlink(config.pid_file)
    logger.info("stopped cleanly")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from homeserver.config import ConfigError
    from homeserver.config.appservice import load_app_services

    try:
        load_app_services(config.app_service_config_files, config.server_name)
    except ConfigError as e:
        print(f"Configuration error in {args.config}:\n{e}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK (server_name {config.server_name})")
    return 0


def cmd_generate_config(args: argparse.Namespace) -> int:
    from homeserver.config import ConfigError, generate_config

    try:
        path = generate_config(
            server_name=args.server_name,
            data_dir=args.data_dir,
            client_port=args.client_port,
            federation_port=args.federation_port,
            database_url=args.database_url,
            enable_registration=args.enable_registration,
            bind_address=args.bind_address,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {path}")
    return 0


def cmd_register_user(args: argparse.Namespace) -> int:
    config = _load(args.config)
    logging.basicConfig(level=logging.WARNING)
    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Confirm password: "):
            print("error: passwords do not match", file=sys.stderr)
            return 1
    from twisted.internet import defer, task

    from homeserver.app import build_homeserver
    from homeserver.core.errors import MatrixError

    async def register(reactor: Any) -> None:
        hs = build_homeserver(config, reactor)
        try:
            user_id = await hs.services.registration.create_account(args.user, password, admin=args.admin)
            print(f"Created {user_id}{' (admin)' if args.admin else ''}")
        except MatrixError as e:
            print(f"error: {e.errcode}: {e.msg}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            hs.db.close()

    task.react(lambda reactor: defer.ensureDeferred(register(reactor)))  # exits the process
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeserver", description="A Matrix homeserver for government.")
    parser.add_argument("--version", action="version", version=f"homeserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the homeserver in the foreground")
    p.add_argument("-c", "--config", required=True, help="path to homeserver.yaml")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file without starting")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("generate-config", help="write homeserver.yaml, a signing key and secrets")
    p.add_argument("--server-name", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--client-port", type=int, default=8008)
    p.add_argument("--federation-port", type=int, default=None)
    p.add_argument("--database-url", default=None, help="postgresql://user:password@host:port/dbname")
    p.add_argument("--enable-registration", action="store_true")
    p.add_argument("--bind-address", default="127.0.0.1")
    p.set_defaults(func=cmd_generate_config)

    p = sub.add_parser("register-user", help="create an account")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("-u", "--user", required=True, help="localpart of the new user")
    p.add_argument("-p", "--password", default=None, help="password (prompted for if absent)")
    p.add_argument("--admin", action="store_true", help="make the user a server admin")
    p.set_defaults(func=cmd_register_user)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
