"""The `scorer` command line. One group; one module per command, imported only when its command
runs, so that `scorer --help` loads click and the settings, nothing else (no SQLAlchemy, numpy,
Celery or torch: docs/BENCHMARKS.md, CLI start-up).

Exit codes: 0 done; 1 an expected error (one line `Error: ...`); 2 usage error; 3 the run
finished but some items failed (each printed on its own line with the reason).
"""

from __future__ import annotations

import importlib
import logging

import click

from scorer.errors import ScorerError
from scorer.settings import PROFILES, Settings

EXIT_ITEMS_FAILED = 3

SETTINGS_HELP = "\n".join(
    f"  SCORER_{name.upper()}: {field.description}" for name, field in Settings.model_fields.items()
)


COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("db", "Create or upgrade the database schema (Alembic migrations)."),
    "demo-data": ("demo", "Write synthetic singing snippets (none/male/female/multi) to "
                  "OUT_DIR/train and OUT_DIR/test, folder per class plus labels.csv, with "
                  "disjoint singers between train and test."),
    "distill": ("distill", "Train one ARCH student on model version TEACHER's averaged "
                "probabilities over every cached feature of its front end; the student is a "
                "new model version (1 member)."),
    "enqueue": ("enqueue", "Score every audio file under PATHS (mp3, wav, flac, ogg; folders "
                "are walked recursively)."),
    "evaluate": ("evaluate", "Accuracy, macro-F1, per-class precision/recall, confusion matrix, "
                 "accuracy against the number of members, and calibration (ECE) of a model "
                 "version on labelled files."),
    "jobs": ("jobs", "List training jobs, newest first."),
    "models": ("models", "List model versions with their validation metrics (* = active)."),
    "reconcile": ("reconcile", "Re-publish snippets that have waited too long in a non-final "
                  "state."),
    "results": ("results", "Print the predictions of a model version (per file by default)."),
    "review": ("review", "Open a local web page of the least certain verdicts, to hear them "
               "and correct them."),
    "status": ("status", "Counts of snippets per state, the active model, and recent failures "
               "with reasons."),
    "train": ("train", "Train an ensemble of ResNets on labelled snippets."),
    "worker": ("worker", "Start a worker process (needs SCORER_BROKER_URL and "
               "SCORER_DATABASE_URL)."),
}  # fmt: skip
"""command -> (module in scorer/cli, the first sentence of its help, for `scorer --help`; a test
checks it against the command's own)."""


class ScorerGroup(click.Group):
    """Commands loaded on demand (the COMMANDS table); ScorerError becomes click's one-line error
    and exit code 1; bugs keep their traceback."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, summary = COMMANDS[name]
        if self._listing:  # `scorer --help`: the summary is enough, the module is not imported
            return click.Command(name, help=summary)
        commands = importlib.import_module(f"scorer.cli.{module}").COMMANDS
        return next(c for c in commands if c.name == name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False

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
@click.option(
    "--profile",
    type=click.Choice(list(PROFILES)),
    default=None,
    help="reference: the exact reference path (the default); fast: Spleeter's segment by need, "
    "bf16 where native, the active model's newest student. Overrides SCORER_PROFILE; settings "
    "given explicitly override the profile's.",
)
@click.version_option(package_name="scorer")
@click.pass_context
def main(ctx: click.Context, verbose: int, profile: str | None) -> None:
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
        ctx.obj = Settings() if profile is None else Settings(profile=profile)
    elif profile is not None:  # settings passed in (tests): the same explicit ones, this profile
        given = ctx.obj.model_dump(include=ctx.obj.model_fields_set - {"profile"})
        ctx.obj = type(ctx.obj)(**given, profile=profile)
