"""users: accounts of clients, professionals and admins

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("user_type", sa.Text, nullable=False),
        sa.Column("first_name", sa.Text, nullable=False),
        sa.Column("last_name", sa.Text, nullable=False),
        sa.Column("phone", sa.Text),
        sa.Column("location", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
        sa.CheckConstraint(
            "user_type IN ('client', 'professional', 'admin')", name=op.f("ck_users_user_type")
        ),
    )
    op.create_index("ix_users_user_type", "users", ["user_type"])
    op.create_index("ix_users_location", "users", ["location"])


def downgrade() -> None:
    op.drop_table("users")
