"""categories and the services professionals offer in them

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _created() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "categories",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("slug", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("active", sa.Boolean, server_default="true", nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_categories"),
        sa.UniqueConstraint("slug", name="uq_categories_slug"),
    )
    op.create_table(
        "services",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("professional_id", sa.BigInteger, nullable=False),
        sa.Column("category_id", sa.BigInteger, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column("active", sa.Boolean, server_default="true", nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_services"),
        sa.ForeignKeyConstraint(
            ["professional_id"], ["users.id"], name="fk_services_professional_id_users"
        ),
        sa.ForeignKeyConstraint(
            ["category_id"], ["categories.id"], name="fk_services_category_id_categories"
        ),
    )
    for column in ("professional_id", "category_id", "price", "active"):
        op.create_index(f"ix_services_{column}", "services", [column])


def downgrade() -> None:
    op.drop_table("services")
    op.drop_table("categories")
