"""Turning files into documents and chunks: readers, chunking, and the ingest service."""
