"""projects clients post, with a status and a budget range

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("client_id", sa.BigInteger, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("status", sa.Text, server_default="open", nullable=False),
        sa.Column("budget_min", sa.Numeric(10, 2)),
        sa.Column("budget_max", sa.Numeric(10, 2)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        sa.ForeignKeyConstraint(["client_id"], ["users.id"], name="fk_projects_client_id_users"),
        sa.CheckConstraint(
            "status IN ('draft', 'open', 'in_progress', 'completed', 'cancelled')",
            name=op.f("ck_projects_status"),
        ),
    )
    op.create_index("ix_projects_client_id", "projects", ["client_id"])
    op.create_index("ix_projects_status", "projects", ["status"])
    op.create_index("ix_projects_budget_min_budget_max", "projects", ["budget_min", "budget_max"])


def downgrade() -> None:
    op.drop_table("projects")
