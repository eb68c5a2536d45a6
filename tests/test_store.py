from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text

from app.store import Base, Chunk, Corpus, Document, open_store, session_scope
from app.store.db import alembic_config, dispose_all
import memory.schema  # noqa: F401,E402 - its tables are in the same migrations


def test_migrations_match_the_models(tmp_path):
    engine = open_store(tmp_path / "t.db")
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == [], f"models changed without an Alembic revision: {diffs}"


def test_upgrade_from_the_first_revision_keeps_user_data(tmp_path):
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    cfg = alembic_config(engine)
    first = ScriptDirectory.from_config(cfg).get_base()
    command.upgrade(cfg, first)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO corpora (id, name, created_at) VALUES (1, 'c', '2026-01-01')"))
        conn.execute(text(
            "INSERT INTO documents (id, corpus_id, title, source, format, text, content_hash,"
            " meta, tokenizer, created_at) VALUES (1, 1, 'Old', '/x.txt', 'txt', 'Hello world',"
            " 'h', '{}', 'approx', '2026-01-01')"
        ))
        conn.execute(text(
            "INSERT INTO chunks (id, document_id, ordinal, start, \"end\", text, n_tokens,"
            " content_hash) VALUES (1, 1, 0, 0, 5, 'Hello', 1, 'hh')"
        ))
    engine.dispose()

    upgraded = open_store(path)  # migrates to head
    with session_scope(upgraded) as s:
        doc = s.scalar(select(Document))
        assert doc.title == "Old"
        assert doc.n_chars == len("Hello world")  # 0002 measured the old row
        assert [c.text for c in doc.chunks] == ["Hello"]
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with upgraded.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head


def test_reopening_a_store_is_a_no_op(tmp_path):
    path = tmp_path / "t.db"
    with session_scope(open_store(path)) as s:
        s.add(Corpus(name="books"))
    dispose_all()
    with session_scope(open_store(path)) as s:
        assert s.scalars(select(Corpus.name)).all() == ["books"]


def test_deleting_a_document_deletes_its_chunks(tmp_path):
    engine = open_store(tmp_path / "t.db")
    with session_scope(engine) as s:
        corpus = Corpus(name="c")
        doc = Document(corpus=corpus, title="d", source="d", format="txt", text="ab cd",
                       content_hash="x")
        doc.chunks = [Chunk(ordinal=0, start=0, end=2, text="ab", n_tokens=1, content_hash="1")]
        s.add(doc)
    with session_scope(engine) as s:
        s.execute(text("DELETE FROM documents"))
    with session_scope(engine) as s:
        assert s.scalar(select(Chunk)) is None


def test_failed_session_leaves_nothing(tmp_path):
    engine = open_store(tmp_path / "t.db")
    try:
        with session_scope(engine) as s:
            s.add(Corpus(name="half"))
            s.flush()
            raise RuntimeError("crash mid-write")
    except RuntimeError:
        pass
    with session_scope(engine) as s:
        assert s.scalar(select(Corpus)) is None


def test_store_lives_under_tomes_home(tomes_home):
    engine = open_store()
    assert engine.url.database == str(tomes_home / "tomes.db")
    assert {"corpora", "documents", "chunks", "runs", "calls"} <= set(inspect(engine).get_table_names())
