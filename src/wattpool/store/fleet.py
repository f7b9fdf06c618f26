"""Sites and one-time join tokens.

A token is shown once, when it is created; only its sha256 is stored. Consuming a
token is one conditional UPDATE, so two nodes racing with the same token cannot
both win.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from wattpool.store.models import JoinToken, Site, utcnow

TOKEN_PREFIX = "wpj_"


class FleetError(Exception):
    """A request about sites or tokens that cannot be honoured; the message says why."""


@dataclass(frozen=True, slots=True)
class SiteRow:
    id: str
    name: str
    region: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class JoinTokenRow:
    id: str
    site_id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by_node: str | None


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _site_row(s: Site) -> SiteRow:
    return SiteRow(s.id, s.name, s.region, s.created_at)


def add_site(engine: Engine, name: str, region: str) -> SiteRow:
    if not name.strip() or not region.strip():
        raise FleetError("a site needs a name and a region")
    try:
        with Session(engine) as s, s.begin():
            site = Site(id=f"site_{uuid.uuid4().hex[:12]}", name=name, region=region,
                        created_at=utcnow())
            s.add(site)
            s.flush()
            return _site_row(site)
    except IntegrityError:
        raise FleetError(f"a site named {name!r} exists already") from None


def get_site(engine: Engine, name: str) -> SiteRow:
    with Session(engine) as s:
        site = s.scalar(select(Site).where(Site.name == name))
        if site is None:
            raise FleetError(f"no site named {name!r}; add it with 'wattpool sites add'")
        return _site_row(site)


def list_sites(engine: Engine) -> list[SiteRow]:
    with Session(engine) as s:
        return [_site_row(x) for x in s.scalars(select(Site).order_by(Site.name))]


def create_join_token(
    engine: Engine, site_name: str, ttl: timedelta
) -> tuple[str, JoinTokenRow]:
    """A new one-time token for the site: (the secret, shown once; its stored row)."""
    if ttl <= timedelta(0):
        raise FleetError("a token's lifetime must be positive")
    site = get_site(engine, site_name)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(24)
    now = utcnow()
    with Session(engine) as s, s.begin():
        token = JoinToken(id=f"tok_{uuid.uuid4().hex[:12]}", site_id=site.id,
                          token_hash=hash_token(secret), created_at=now, expires_at=now + ttl)
        s.add(token)
        s.flush()
        row = JoinTokenRow(token.id, token.site_id, token.created_at, token.expires_at,
                           None, None)
    return secret, row


def consume_join_token(engine: Engine, secret: str, node_id: str) -> SiteRow:
    """Mark the token used by node_id and return its site, or raise FleetError saying why."""
    digest = hash_token(secret)
    now = utcnow()
    with Session(engine) as s, s.begin():
        claimed = s.execute(
            update(JoinToken)
            .where(JoinToken.token_hash == digest, JoinToken.used_at.is_(None),
                   JoinToken.expires_at > now)
            .values(used_at=now, used_by_node=node_id)
        ).rowcount
        token = s.scalar(select(JoinToken).where(JoinToken.token_hash == digest))
        if token is None:
            raise FleetError("unknown join token; create one with 'wattpool tokens create'")
        if not claimed:
            if token.used_at is not None and token.used_by_node != node_id:
                raise FleetError("this join token was used already; create a new one")
            if token.used_at is None:
                raise FleetError("this join token has expired; create a new one")
        site = s.get(Site, token.site_id)
        assert site is not None
        return _site_row(site)
