"""review labels: label origin and time, the label_events log, review-queue indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 22:40:00

- ``snippets.label_origin`` / ``snippets.labelled_at``: where a label came from (null = with the
  data, ``review`` = `scorer review`) and when it was written (issue 13); both indexed, for the
  review queue's filters on them.
- ``label_events``: every labelling write, append-only (last write wins on ``snippets.label``).
- ``ix_predictions_version_window_entropy`` / ``..._disagreement``: the review queue's keyset
  pagination (least certain first) reads an index, so a deep page costs what the first does.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("snippets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label_origin", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_snippets_label"), ["label"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_snippets_label_origin"), ["label_origin"], unique=False
        )
    op.create_table(
        "label_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("previous_label", sa.String(length=64), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("predicted_label", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_label_events_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["snippets.sha256"],
            name=op.f("fk_label_events_sha256_snippets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_events")),
    )
    with op.batch_alter_table("label_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_label_events_sha256"), ["sha256"], unique=False)
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_predictions_version_window_entropy",
            ["model_version_id", "window_index", "entropy", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_predictions_version_window_disagreement",
            ["model_version_id", "window_index", "disagreement", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_version_window_disagreement")
        batch_op.drop_index("ix_predictions_version_window_entropy")
    with op.batch_alter_table("label_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_label_events_sha256"))
    op.drop_table("label_events")
    with op.batch_alter_table("snippets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snippets_label_origin"))
        batch_op.drop_index(batch_op.f("ix_snippets_label"))
        batch_op.drop_column("labelled_at")
        batch_op.drop_column("label_origin")
