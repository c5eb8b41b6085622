"""source paths, training job claim token, result-query index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 19:20:00

- ``source_paths``: every (absolute path, sha256) a user enqueued, so two copies of one song are
  both listed (issue 10 item 11).
- ``training_jobs.claim``: the fencing token of the current claim (issue 10 item 5).
- ``snippets.in_flight``: the delivery working on a snippet, so only deaths mid-work count as
  poison deliveries (issue 10 item 6).
- ``ix_predictions_version_window_sha``: the result and accuracy queries (issue 10 item 9).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "source_paths",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["snippets.sha256"],
            name=op.f("fk_source_paths_sha256_snippets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_paths")),
        sa.UniqueConstraint("path", "sha256", name=op.f("uq_source_paths_path_sha256")),
    )
    with op.batch_alter_table("source_paths", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_source_paths_sha256"), ["sha256"], unique=False)
    # Every snippet known so far was seen at its source_path.
    op.execute(
        "INSERT INTO source_paths (path, sha256, seen_at) "
        "SELECT source_path, sha256, created_at FROM snippets"
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("snippets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("in_flight", sa.String(length=255), nullable=True))
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_predictions_version_window_sha",
            ["model_version_id", "window_index", "sha256"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_version_window_sha")
    with op.batch_alter_table("snippets", schema=None) as batch_op:
        batch_op.drop_column("in_flight")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_column("claim")
    with op.batch_alter_table("source_paths", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_source_paths_sha256"))
    op.drop_table("source_paths")
