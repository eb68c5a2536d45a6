"""tomes commands: search (see the issue that owns it)."""
