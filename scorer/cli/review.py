"""`scorer review`: serve the review page on this machine until Ctrl-C."""

from __future__ import annotations

import click

from scorer.cli.common import ready_engine, settings_of
from scorer.errors import ScorerError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@click.command("review")
@click.option("--model-version", "model_key", help="Name or id; default: the active one.")
@click.option("--label", help="Open the queue on the snippets predicted as this class.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, show_default=True,
    help="TCP port; 0 = a free one.",
)  # fmt: skip
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="Address to listen on. Anything but loopback exposes the page (plain HTTP, guarded "
    "only by the token) to the network.",
)  # fmt: skip
@click.pass_context
def review_cmd(
    ctx: click.Context, model_key: str | None, label: str | None, port: int, host: str
) -> None:
    """Open a local web page of the least certain verdicts, to hear them and correct them.

    The corrections are labels (origin `review`), used by `scorer train` and `scorer evaluate`
    like any other. Keys on a snippet: 1-9 set the label, n next, s skip, space play."""
    import secrets
    import socket
    from urllib.parse import urlencode

    import uvicorn

    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker
    from scorer.review.app import build_app

    settings = settings_of(ctx)
    engine = ready_engine(settings)
    with make_sessionmaker(engine)() as s:
        model = queries.model_by_name_or_id(s, model_key) if model_key else queries.active_model(s)
        if model is None:
            raise ScorerError(
                f"no model version {model_key!r}; see `scorer models`"
                if model_key
                else "no active model version: run `scorer train`, or give --model-version"
            )
        if label is not None and label not in model.classes:
            raise ScorerError(f"--label must be one of {', '.join(model.classes)}")
        name = model.name
    token = secrets.token_urlsafe(24)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections wait from now on, so the printed URL answers at once
    except OSError as exc:
        raise ScorerError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = sock.getsockname()[1]
    loopback = host in LOOPBACK
    app = build_app(
        settings, engine, token, model_key=model_key, allowed_hosts=None if loopback else ["*"]
    )
    query = urlencode({k: v for k, v in {"predicted": label}.items() if v})
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/{token}/queue" + (f"?{query}" if query else "")
    click.echo(f"model {name}: review at {url}")
    if not loopback:
        click.echo(
            f"warning: listening on {host}: anyone who can reach it and learns the URL can "
            "label (plain HTTP)",
            err=True,
        )
    click.echo("Ctrl-C to stop", err=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


COMMANDS = [review_cmd]
