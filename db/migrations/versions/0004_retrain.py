"""retraining: the candidate's lineage and gate decision on model_versions; the retrain lease

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as b:
        b.add_column(sa.Column("parent_version", sa.String(length=160), nullable=True))
        b.add_column(sa.Column("decision", sa.String(length=16), nullable=True))
        b.add_column(sa.Column("decision_reasons", sa.JSON(), nullable=True))
        b.add_column(sa.Column("comparison", sa.JSON(), nullable=True))
        b.add_column(sa.Column("training", sa.JSON(), nullable=True))
    op.create_table(
        "retrain_leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_retrain_leases")),
    )


def downgrade() -> None:
    op.drop_table("retrain_leases")
    with op.batch_alter_table("model_versions") as b:
        b.drop_column("training")
        b.drop_column("comparison")
        b.drop_column("decision_reasons")
        b.drop_column("decision")
        b.drop_column("parent_version")
