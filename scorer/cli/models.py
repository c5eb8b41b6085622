"""`scorer models`: the trained model versions, and which one is active."""

from __future__ import annotations

import json

import click
from sqlalchemy import select

from scorer.cli.common import ready_engine, settings_of
from scorer.errors import ScorerError


@click.group("models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
@click.pass_context
def models_group(ctx: click.Context, as_json: bool) -> None:
    """List model versions with their validation metrics (* = active)."""
    if ctx.invoked_subcommand is not None:
        return
    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import ModelVersion

    engine = ready_engine(settings_of(ctx))
    with make_sessionmaker(engine)() as s:
        versions = s.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    rows = [
        {
            "id": v.id,
            "name": v.name,
            "active": v.active,
            "classes": v.classes,
            "members": v.members,
            "frontend_version": v.frontend_version,
            "val_accuracy": v.metrics.get("ensemble_val_acc"),
            "created_at": v.created_at.isoformat(),
        }
        for v in versions
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        acc = r["val_accuracy"]
        click.echo(
            f"{'*' if r['active'] else ' '} {r['name']:<12} members={r['members']:<3} "
            f"val_acc={'-' if acc is None else f'{acc:.4f}'}  classes={','.join(r['classes'])}  "
            f"{r['frontend_version']}  {r['created_at'][:19]}"
        )
    if not rows:
        click.echo("no model versions yet: run `scorer train`", err=True)


@models_group.command("activate")
@click.argument("version")
@click.pass_context
def activate(ctx: click.Context, version: str) -> None:
    """Make VERSION (name or id) the model that scores from now on."""
    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker

    engine = ready_engine(settings_of(ctx))
    with make_sessionmaker(engine).begin() as s:
        model = queries.model_by_name_or_id(s, version)
        if model is None:
            raise ScorerError(f"no model version {version!r}; see `scorer models`")
        queries.activate_model(s, model.id)
    click.echo(f"active model: {model.name}")


COMMANDS = [models_group]
