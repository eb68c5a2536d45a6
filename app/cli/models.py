"""tomes commands: models (see the issue that owns it)."""
