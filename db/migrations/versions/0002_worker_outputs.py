"""worker leases, result details, annotations, retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 08:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("results") as b:
        b.add_column(sa.Column("model_version", sa.String(length=160), nullable=True))
        b.add_column(sa.Column("flags", sa.JSON(), nullable=True))
        b.add_column(sa.Column("timings", sa.JSON(), nullable=True))
        b.add_column(sa.Column("outputs", sa.JSON(), nullable=True))
    with op.batch_alter_table("studies") as b:
        b.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_fk", sa.Integer(), nullable=False),
        sa.Column("series_fk", sa.Integer(), nullable=True),
        sa.Column("landmarks_lps", sa.JSON(), nullable=False),
        sa.Column("quality", sa.String(length=8), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_fk"], ["series.id"], name=op.f("fk_annotations_series_fk_series")
        ),
        sa.ForeignKeyConstraint(
            ["study_fk"], ["studies.id"], name=op.f("fk_annotations_study_fk_studies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
    )
    op.create_index(op.f("ix_annotations_study_fk"), "annotations", ["study_fk"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_annotations_study_fk"), table_name="annotations")
    op.drop_table("annotations")
    with op.batch_alter_table("studies") as b:
        b.drop_column("purged_at")
    with op.batch_alter_table("results") as b:
        b.drop_column("outputs")
        b.drop_column("timings")
        b.drop_column("flags")
        b.drop_column("model_version")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("heartbeat_at")
