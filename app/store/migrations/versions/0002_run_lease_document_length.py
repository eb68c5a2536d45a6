"""run lease (owner pid, host, heartbeat) and stored document length

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('documents') as batch:
        batch.add_column(sa.Column('n_chars', sa.Integer(), nullable=False, server_default='0'))
    # Documents stored before this revision get their real length.
    op.execute("UPDATE documents SET n_chars = length(text)")
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('owner_pid', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('owner_host', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('heartbeat_at')
        batch.drop_column('owner_host')
        batch.drop_column('owner_pid')
    with op.batch_alter_table('documents') as batch:
        batch.drop_column('n_chars')
