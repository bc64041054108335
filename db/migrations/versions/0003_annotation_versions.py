"""annotations: versions (supersedes), annotator, source reference, annotation time

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotations") as b:
        b.add_column(sa.Column("annotator", sa.String(length=64), nullable=True))
        b.add_column(sa.Column("annotated_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("source_ref", sa.String(length=1024), nullable=True))
        b.add_column(sa.Column("source_uid", sa.String(length=64), nullable=True))
        b.add_column(sa.Column("supersedes_fk", sa.Integer(), nullable=True))
        b.create_foreign_key(
            op.f("fk_annotations_supersedes_fk_annotations"),
            "annotations",
            ["supersedes_fk"],
            ["id"],
        )
        b.create_unique_constraint(op.f("uq_annotations_supersedes_fk"), ["supersedes_fk"])
        b.create_index(op.f("ix_annotations_source_uid"), ["source_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("annotations") as b:
        b.drop_index(op.f("ix_annotations_source_uid"))
        b.drop_constraint(op.f("uq_annotations_supersedes_fk"), type_="unique")
        b.drop_constraint(op.f("fk_annotations_supersedes_fk_annotations"), type_="foreignkey")
        b.drop_column("supersedes_fk")
        b.drop_column("source_uid")
        b.drop_column("source_ref")
        b.drop_column("annotated_at")
        b.drop_column("annotator")
