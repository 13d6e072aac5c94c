"""Ingest: list a source, decode every image once, register images, labels and ingest findings."""
