"""episodic memory workspace: entities, mentions, states, events, questions, extractions

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# An entity lives as long as one of its mentions: when the last one goes (its chunk's
# document was removed), so does the entity. Cascaded deletes fire SQLite triggers.
_ORPHAN_TRIGGER = """
CREATE TRIGGER memory_entity_orphan AFTER DELETE ON memory_mentions
WHEN NOT EXISTS (SELECT 1 FROM memory_mentions WHERE entity_id = OLD.entity_id)
BEGIN
    DELETE FROM memory_entities WHERE id = OLD.entity_id;
END
"""

# The same on PostgreSQL, whose triggers call a function.
_ORPHAN_FUNCTION_PG = """
CREATE OR REPLACE FUNCTION memory_entity_orphan() RETURNS trigger AS $$
BEGIN
    DELETE FROM memory_entities e WHERE e.id = OLD.entity_id
        AND NOT EXISTS (SELECT 1 FROM memory_mentions m WHERE m.entity_id = OLD.entity_id);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
_ORPHAN_TRIGGER_PG = """
CREATE TRIGGER memory_entity_orphan AFTER DELETE ON memory_mentions
FOR EACH ROW EXECUTE FUNCTION memory_entity_orphan()
"""


def _chunk_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(['chunk_id'], ['chunks.id'], ondelete='CASCADE')


def upgrade() -> None:
    op.create_table('memory_entities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('corpus_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('norm', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['corpus_id'], ['corpora.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_memory_entities_corpus_norm', 'memory_entities', ['corpus_id', 'norm'])

    op.create_table('memory_mentions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entity_id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('norm', sa.String(length=200), nullable=False),
    sa.Column('start', sa.Integer(), nullable=True),
    sa.Column('end', sa.Integer(), nullable=True),
    sa.Column('via', sa.String(length=20), nullable=False),
    sa.ForeignKeyConstraint(['entity_id'], ['memory_entities.id'], ondelete='CASCADE'),
    _chunk_fk(),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_memory_mentions_entity_id', 'memory_mentions', ['entity_id'])
    op.create_index('ix_memory_mentions_chunk_id', 'memory_mentions', ['chunk_id'])

    op.create_table('memory_states',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entity_id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('attribute', sa.String(length=20), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('time_text', sa.Text(), nullable=True),
    sa.Column('date', sa.String(length=10), nullable=True),
    sa.Column('place_id', sa.Integer(), nullable=True),
    sa.Column('carried', sa.Boolean(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=True),
    sa.Column('end', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['entity_id'], ['memory_entities.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['place_id'], ['memory_entities.id'], ondelete='SET NULL'),
    _chunk_fk(),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_memory_states_entity_id', 'memory_states', ['entity_id'])
    op.create_index('ix_memory_states_chunk_id', 'memory_states', ['chunk_id'])

    op.create_table('memory_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('time_text', sa.Text(), nullable=True),
    sa.Column('date', sa.String(length=10), nullable=True),
    sa.Column('time_anchor', sa.Text(), nullable=True),
    sa.Column('time_carried', sa.Boolean(), nullable=False),
    sa.Column('place_text', sa.Text(), nullable=True),
    sa.Column('place_id', sa.Integer(), nullable=True),
    sa.Column('place_carried', sa.Boolean(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=True),
    sa.Column('end', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['place_id'], ['memory_entities.id'], ondelete='SET NULL'),
    _chunk_fk(),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_memory_events_chunk_id', 'memory_events', ['chunk_id'])

    op.create_table('memory_event_actors',
    sa.Column('event_id', sa.Integer(), nullable=False),
    sa.Column('entity_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['memory_events.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['entity_id'], ['memory_entities.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('event_id', 'entity_id')
    )
    op.create_index('ix_memory_event_actors_entity_id', 'memory_event_actors', ['entity_id'])

    op.create_table('memory_questions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.Integer(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=True),
    sa.Column('end', sa.Integer(), nullable=True),
    _chunk_fk(),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_memory_questions_chunk_id', 'memory_questions', ['chunk_id'])

    op.create_table('memory_answers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('question_id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.Integer(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=True),
    sa.Column('end', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['question_id'], ['memory_questions.id'], ondelete='CASCADE'),
    _chunk_fk(),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_memory_answers_question_id', 'memory_answers', ['question_id'])
    op.create_index('ix_memory_answers_chunk_id', 'memory_answers', ['chunk_id'])

    op.create_table('memory_extractions',
    sa.Column('chunk_id', sa.Integer(), nullable=False),
    sa.Column('parsed', sa.String(length=20), nullable=False),
    sa.Column('record', sa.JSON(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    _chunk_fk(),
    sa.PrimaryKeyConstraint('chunk_id')
    )

    if op.get_bind().dialect.name == "sqlite":
        op.execute(_ORPHAN_TRIGGER)
    elif op.get_bind().dialect.name == "postgresql":
        op.execute(_ORPHAN_FUNCTION_PG)
        op.execute(_ORPHAN_TRIGGER_PG)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS memory_entity_orphan")
    elif op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS memory_entity_orphan ON memory_mentions")
        op.execute("DROP FUNCTION IF EXISTS memory_entity_orphan()")
    for table in ('memory_extractions', 'memory_answers', 'memory_questions',
                  'memory_event_actors', 'memory_events', 'memory_states', 'memory_mentions',
                  'memory_entities'):
        op.drop_table(table)
