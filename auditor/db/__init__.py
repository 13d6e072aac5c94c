"""The SQL store: typed models and engine/session helpers."""
