"""`airflow skyshare ...`: the provider's CLI group (provider info "cli", Airflow 3.2+).

The same commands as the `skyshare` script (cli.COMMANDS); an Airflow without provider CLI
groups keeps only the script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial

from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

from airflow_provider_skyshare import cli


def _exit_with(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> None:
    """Airflow ignores what a command returns: the status has to leave by SystemExit."""
    status = cli.run(func, args)
    if status:
        sys.exit(status)


def _action(command: cli.Command) -> ActionCommand:
    return ActionCommand(name=command.name, help=command.help,
                         func=partial(_exit_with, command.func),
                         args=tuple(Arg(o.flags, **o.kwargs) for o in command.options))


def get_skyshare_cli_commands() -> list[GroupCommand]:
    return [GroupCommand(name="skyshare",
                         help="GPU fleet shared by several orgs: capacity, placement, timelines, orphans",
                         subcommands=tuple(_action(c) for c in cli.COMMANDS),
                         description=cli.__doc__)]
