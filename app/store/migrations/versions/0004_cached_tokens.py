"""calls.cached_tokens: prompt tokens the server read from its prefix cache

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Calls logged before this revision had no way to say: 0, as for a server that never does.
    with op.batch_alter_table('calls') as batch:
        batch.add_column(sa.Column('cached_tokens', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.drop_column('cached_tokens')
