"""reviews clients leave on services, rated 1 to 5

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The foreign keys lock services and users (SHARE ROW EXCLUSIVE). Take both up front, in the
    # order the app's transactions lock them, so a busy app cannot deadlock with this revision:
    # any wait happens here, under lock_timeout.
    op.execute("LOCK TABLE users, services IN SHARE ROW EXCLUSIVE MODE")
    op.create_table(
        "reviews",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("service_id", sa.BigInteger, nullable=False),
        sa.Column("professional_id", sa.BigInteger, nullable=False),
        sa.Column("client_id", sa.BigInteger, nullable=False),
        sa.Column("rating", sa.SmallInteger, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name="fk_reviews_service_id_services"
        ),
        sa.ForeignKeyConstraint(
            ["professional_id"], ["users.id"], name="fk_reviews_professional_id_users"
        ),
        sa.ForeignKeyConstraint(["client_id"], ["users.id"], name="fk_reviews_client_id_users"),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name=op.f("ck_reviews_rating")),
    )
    for column in ("service_id", "professional_id", "rating"):
        op.create_index(f"ix_reviews_{column}", "reviews", [column])


def downgrade() -> None:
    op.drop_table("reviews")
