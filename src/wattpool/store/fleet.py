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
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from wattpool.store.models import Curtailment, JoinToken, Site, utcnow

TOKEN_PREFIX = "wpj_"


class FleetError(Exception):
    """A request about sites or tokens that cannot be honoured; the message says why."""


@dataclass(frozen=True, slots=True)
class SiteRow:
    id: str
    name: str
    region: str
    created_at: datetime
    power_cap_kw: float | None = None
    price_source: dict[str, Any] | None = None
    curtail_above: float | None = None  # per MWh, the price source's currency
    dr_commitments: tuple[DrCommitment, ...] = ()


@dataclass(frozen=True, slots=True)
class DrCommitment:
    """A demand-response programme the site is in: it must shed within ``within_s``."""

    name: str
    within_s: float


@dataclass(frozen=True, slots=True)
class CurtailmentRow:
    id: str
    site_id: str
    cause: str  # "signal" or "price"
    within_s: float
    reason: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class JoinTokenRow:
    id: str
    site_id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by_node: str | None


# "Not given" for the power settings, where None means "clear it".
_UNSET: Any = object()


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _site_row(s: Site) -> SiteRow:
    commitments = tuple(DrCommitment(str(c["name"]), float(c["within_s"]))
                        for c in s.dr_commitments or ())
    return SiteRow(s.id, s.name, s.region, s.created_at, s.power_cap_kw, s.price_source,
                   s.curtail_above, commitments)


def add_site(engine: Engine, name: str, region: str, **power: Any) -> SiteRow:
    """Add a site; ``power`` takes ``set_site_power``'s settings, written in the same
    transaction (so settings it refuses add no site)."""
    if not name.strip() or not region.strip():
        raise FleetError("a site needs a name and a region")
    try:
        with Session(engine) as s, s.begin():
            site = Site(id=f"site_{uuid.uuid4().hex[:12]}", name=name, region=region,
                        created_at=utcnow())
            _apply_power(site, **power)
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


def set_site_power(
    engine: Engine, name: str, *, power_cap_kw: float | None = _UNSET,
    price_source: dict[str, Any] | None = _UNSET, curtail_above: float | None = _UNSET,
    dr_commitments: list[DrCommitment] | None = _UNSET,
) -> SiteRow:
    """Change the site's power settings; arguments left out keep their value, None clears."""
    with Session(engine) as s, s.begin():
        site = s.scalar(select(Site).where(Site.name == name))
        if site is None:
            raise FleetError(f"no site named {name!r}; add it with 'wattpool sites add'")
        _apply_power(site, power_cap_kw=power_cap_kw, price_source=price_source,
                     curtail_above=curtail_above, dr_commitments=dr_commitments)
        s.flush()
        return _site_row(site)


def _apply_power(
    site: Site, *, power_cap_kw: float | None = _UNSET,
    price_source: dict[str, Any] | None = _UNSET, curtail_above: float | None = _UNSET,
    dr_commitments: list[DrCommitment] | None = _UNSET,
) -> None:
    if power_cap_kw not in (_UNSET, None) and power_cap_kw <= 0:
        raise FleetError("a power cap must be positive (kW)")
    if dr_commitments not in (_UNSET, None):
        for c in dr_commitments:
            if not c.name.strip() or c.within_s <= 0:
                raise FleetError("a demand-response commitment needs a name and a positive "
                                 "deadline")
    if power_cap_kw is not _UNSET:
        site.power_cap_kw = power_cap_kw
    if price_source is not _UNSET:
        site.price_source = price_source
    if curtail_above is not _UNSET:
        site.curtail_above = curtail_above
    if dr_commitments is not _UNSET:
        site.dr_commitments = (None if dr_commitments is None else
                               [{"name": c.name, "within_s": c.within_s}
                                for c in dr_commitments])


def _curtailment_row(c: Curtailment) -> CurtailmentRow:
    return CurtailmentRow(c.id, c.site_id, c.cause, c.within_s, c.reason, c.started_at,
                          c.ended_at)


def start_curtailment(engine: Engine, site_id: str, cause: str, within_s: float,
                      reason: str) -> CurtailmentRow:
    """Open a curtailment of the site, unless one is open already (then return that one)."""
    with Session(engine) as s, s.begin():
        open_one = s.scalar(select(Curtailment).where(Curtailment.site_id == site_id,
                                                      Curtailment.ended_at.is_(None)))
        if open_one is not None:
            return _curtailment_row(open_one)
        row = Curtailment(id=f"curt_{uuid.uuid4().hex[:12]}", site_id=site_id, cause=cause,
                          within_s=within_s, reason=reason, started_at=utcnow())
        s.add(row)
        s.flush()
        return _curtailment_row(row)


def end_curtailment(engine: Engine, site_id: str) -> int:
    """Close the site's open curtailment; returns how many were open (0 or 1)."""
    with Session(engine) as s, s.begin():
        return s.execute(update(Curtailment)
                         .where(Curtailment.site_id == site_id, Curtailment.ended_at.is_(None))
                         .values(ended_at=utcnow())).rowcount


def active_curtailments(engine: Engine) -> list[CurtailmentRow]:
    with Session(engine) as s:
        rows = s.scalars(select(Curtailment).where(Curtailment.ended_at.is_(None)))
        return [_curtailment_row(c) for c in rows]


def curtailment_history(engine: Engine, site_id: str, limit: int = 10) -> list[CurtailmentRow]:
    with Session(engine) as s:
        rows = s.scalars(select(Curtailment).where(Curtailment.site_id == site_id)
                         .order_by(Curtailment.started_at.desc()).limit(limit))
        return [_curtailment_row(c) for c in rows]
