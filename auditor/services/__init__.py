"""The operations the REST API (and the CLI) perform, kept out of the routers so they can be
called and tested without HTTP. Each raises one of the errors below for a bad request."""


class ServiceError(Exception):
    """A request the service refuses; the API maps each subclass to one status code."""


class NotFound(ServiceError, LookupError):
    pass


class Forbidden(ServiceError):
    pass


class Conflict(ServiceError):
    pass


class Invalid(ServiceError, ValueError):
    pass
