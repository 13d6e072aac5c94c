"""finding subjects and states, so reviews carry over to later audits

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("subject_state", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_findings_dataset_subject", ["dataset_id", "subject"], unique=False
        )
    # Findings written before this revision: the subject is the key without its scope.
    position = "instr" if op.get_bind().dialect.name == "sqlite" else "strpos"
    op.execute(f"UPDATE findings SET subject = substr(key, {position}(key, ':') + 1)")


def downgrade() -> None:
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index("ix_findings_dataset_subject")
        batch_op.drop_column("subject_state")
        batch_op.drop_column("subject")
