"""One router per resource; each validates input, checks access and calls a service."""

API_PREFIX = "/api/v1"
