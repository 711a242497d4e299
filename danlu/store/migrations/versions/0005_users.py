"""Users, their roles per project, and API keys that belong to a user and carry a role.

Existing keys keep working: ``scope = 'admin'`` becomes role ``admin`` and ``scope =
'predict'`` role ``predictor`` (may only predict), both on every project (``*``) and owned by no
user (such a key acts as ``key <id>`` in the audit log). The ``scope`` column stays, derived
from the role, for the servers that read it. Registered models get a ``project`` (``default``
for the models already there).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("disabled_at", sa.Float()),
    )
    op.create_table(
        "grants",
        sa.Column(
            "user",
            sa.String(100),
            sa.ForeignKey("users.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("project", sa.String(100), primary_key=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("granted_at", sa.Float(), nullable=False),
        sa.Column("granted_by", sa.String(200), nullable=False),
    )
    op.add_column("api_keys", sa.Column("user", sa.String(100)))
    op.add_column("api_keys", sa.Column("project", sa.String(100)))
    op.add_column("api_keys", sa.Column("role", sa.String(20)))
    op.execute(
        "UPDATE api_keys SET project = '*', "
        "role = CASE WHEN scope = 'admin' THEN 'admin' ELSE 'predictor' END"
    )
    op.create_index("ix_api_keys_user", "api_keys", ["user"])
    op.add_column(
        "models",
        sa.Column("project", sa.String(100), nullable=False, server_default="default"),
    )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("project")
    op.drop_index("ix_api_keys_user", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("role")
        batch.drop_column("project")
        batch.drop_column("user")
    op.drop_table("grants")
    op.drop_table("users")
