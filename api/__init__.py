"""The REST API: a thin FastAPI layer over the services in `auditor`."""
