"""Request dependencies: the database session, the settings, and who is calling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from auditor.auth import LOCAL_ADMIN, AuthError, Principal, authenticate
from auditor.config import Settings
from auditor.db.models import ApiScope, Image, Label
from auditor.services import NotFound

bearer = HTTPBearer(auto_error=False, description="An API key from `auditor apikey create`")


def get_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routers that write commit it themselves before answering, so a
    failed commit is an error response rather than a lost write after a 200."""
    with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]


def get_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if not request.app.state.settings.auth:
        return LOCAL_ADMIN
    if credentials is None:
        raise AuthError("send `Authorization: Bearer <api key>`")
    return authenticate(session, credentials.credentials)


def requires(scope: ApiScope):
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        principal.require(scope)
        return principal

    return check


Reader = Annotated[Principal, Depends(requires(ApiScope.READ))]
Reviewer = Annotated[Principal, Depends(requires(ApiScope.REVIEW))]
Admin = Annotated[Principal, Depends(requires(ApiScope.ADMIN))]


def ensure_dataset(principal: Principal, dataset_id: int, what: str = "dataset") -> None:
    """Out-of-scope resources answer 404, as if absent, so a key cannot probe other datasets."""
    if not principal.can_see(dataset_id):
        raise NotFound(f"{what} does not exist")


def ensure_image(session: Session, principal: Principal, image: Image | None) -> None:
    if image is None:
        raise NotFound("image does not exist")
    ensure_dataset(principal, image.dataset_id, "image")
    if principal.vendor is not None:
        labeled = session.query(Label.id).filter(
            Label.image_id == image.id, Label.source == principal.vendor
        )
        if labeled.first() is None:
            raise NotFound("image does not exist")
