"""The episodic memory workspace (after GSW): ``schema`` (tables), ``operator`` (the
per-chunk prompt and the tolerant reading of its reply), ``resolve`` and ``reconcile``
(merging records into the workspace in document order), ``workspace`` (reading it per
document or per corpus) and ``query`` (compact, cited context for a question). The
strategy that drives it with a model is ``pipelines.episodic``."""
