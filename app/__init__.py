"""tomes: the core (settings, store, ingestion) and the front doors (API, CLI)."""
