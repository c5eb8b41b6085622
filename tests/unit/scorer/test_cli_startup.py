"""CLI start-up: `scorer --help` loads click and the settings only (no SQLAlchemy, numpy, Celery,
torch: ~1 s of imports before), and its command list, taken from the table in scorer/cli, says
what each command's own help says."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import click

import scorer.cli
from scorer.cli import COMMANDS, main

HEAVY = ("torch", "torchvision", "celery", "sqlalchemy", "alembic", "numpy", "matplotlib")


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import json, sys\n"
        "from scorer.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands:" in out.stdout and "enqueue" in out.stdout
    assert json.loads(out.stderr.strip().splitlines()[-1]) == []


def commands_section(group: click.Group) -> str:
    ctx = click.Context(group, max_content_width=100)
    formatter = ctx.make_formatter()
    group.format_commands(ctx, formatter)
    return formatter.getvalue()


def test_the_command_table_matches_each_command() -> None:
    ctx = click.Context(main)
    for name, (module, _) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.callback is not None and command.callback.__module__.endswith(module)
    eager = click.Group("scorer", commands={n: main.get_command(ctx, n) for n in COMMANDS})  # type: ignore[misc]
    assert commands_section(main) == commands_section(eager)
    assert main.get_command(ctx, "no-such-command") is None


def test_every_command_module_is_in_the_table() -> None:
    """A new command module must be listed, or `scorer` would not know its commands."""
    for info in pkgutil.iter_modules(scorer.cli.__path__):
        module = importlib.import_module(f"scorer.cli.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            assert COMMANDS.get(command.name, ("",))[0] == info.name, command.name
