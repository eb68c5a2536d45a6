"""SQLite store: the tables (models) and how to open the database (db)."""

from app.store.db import open_store, session_scope
from app.store.models import Base, Call, Chunk, Corpus, Document, Run

__all__ = ["Base", "Call", "Chunk", "Corpus", "Document", "Run", "open_store", "session_scope"]
