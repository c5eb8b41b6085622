"""The `scorer` command line. One group; one module per command; heavy imports inside commands
so that `scorer --help` is instant.

Exit codes: 0 done; 1 an expected error (one line `Error: ...`); 2 usage error; 3 the run
finished but some items failed (each printed on its own line with the reason).
"""

from __future__ import annotations

import logging

import click

from scorer.errors import ScorerError
from scorer.settings import Settings

EXIT_ITEMS_FAILED = 3

SETTINGS_HELP = "\n".join(
    f"  SCORER_{name.upper()}: {field.description}" for name, field in Settings.model_fields.items()
)


class ScorerGroup(click.Group):
    """Turns ScorerError into click's one-line error and exit code 1; bugs keep their traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except ScorerError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(
    cls=ScorerGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="\b\nSettings (environment variables):\n" + SETTINGS_HELP,
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="scorer")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Label song snippets by the gender of their singers (none, male, female, multi).

    \b
    Typical use:
      scorer db upgrade
      scorer train --data ./labelled --members 20
      scorer enqueue ./songs
      scorer results --csv > results.csv
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    if ctx.obj is None:
        ctx.obj = Settings()


def _register() -> None:
    from scorer.cli import (
        db,
        demo,
        distill,
        enqueue,
        evaluate,
        jobs,
        models,
        reconcile,
        results,
        status,
        train,
        worker,
    )

    for module in (
        db, demo, distill, enqueue, evaluate, jobs, models, reconcile, results, status, train,
        worker,
    ):  # fmt: skip
        for command in module.COMMANDS:
            main.add_command(command)


_register()
