"""tomes commands: runs (see the issue that owns it)."""
