"""One module per backend; serving/registry.py imports a module only when it is chosen."""
