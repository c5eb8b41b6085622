"""work done per snippet: how many times each stage's work began

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 01:40:00

- ``snippets.preprocess_runs`` / ``snippets.score_runs``: counted when a stage's work on the
  snippet begins (in the statement that sets ``in_flight``, before the work), so a delivery that
  dies mid-work counts too. An operator sees what a snippet cost and where faults made work be
  done again; a message for work already done adds nothing, which is how the fault tests check
  that redelivery and re-published messages are idempotent in work, not only in rows
  (issue 10, "tests that must get stronger").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("snippets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preprocess_runs", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("score_runs", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("snippets", schema=None) as batch_op:
        batch_op.drop_column("score_runs")
        batch_op.drop_column("preprocess_runs")
