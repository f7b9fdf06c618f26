"""Per-node NATS credentials: decentralized JWT auth (operator → account → user).

The control plane holds an operator key, the ``wattpool`` account key and a system
account key (:class:`NatsAuthority`). From them it renders a nats-server config in
operator mode (``resolver: MEMORY``, accounts preloaded) and signs user JWTs whose
permissions let a node touch only its own subjects (:func:`node_permissions`).

Everything here is done by hand on top of ``nkeys`` key pairs: seed encoding (nkeys
0.2 has no generator), the JWT format (header ``{"typ":"JWT","alg":"ed25519-nkey"}``,
base64url without padding, ed25519 signature over ``header.payload``) and the
``.creds`` file. See docs/nats-auth.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import nkeys

from wattpool.protocol import JOIN, cancel_subject, heartbeat_subject, infer_subject

log = logging.getLogger(__name__)

# --- nkeys encoding --------------------------------------------------------------

PREFIX_SEED = 18 << 3  # base32 "S"
PREFIX_OPERATOR = 14 << 3  # "O"
PREFIX_ACCOUNT = 0  # "A"
PREFIX_USER = 20 << 3  # "U"
_ROLE_PREFIXES = {PREFIX_OPERATOR, PREFIX_ACCOUNT, PREFIX_USER}

AUTHORITY_FILE_VERSION = 1
DEFAULT_RESPONSE_TTL_S = 3600.0
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0), the checksum nkeys appends to every key."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def _unb32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))  # nkeys drop the padding


def encode_seed(raw: bytes, prefix: int) -> str:
    """Encode 32 raw ed25519 seed bytes as an nkeys seed (``S`` + role letter + …).

    Layout: two header bytes carrying the seed prefix and the role prefix (5 bits each),
    the raw seed, a little-endian CRC16 of all of that; base32 without padding.
    """
    if prefix not in _ROLE_PREFIXES:
        raise ValueError(f"not an nkeys role prefix: {prefix}")
    if len(raw) != 32:
        raise ValueError("an nkeys seed is 32 bytes")
    body = bytes([PREFIX_SEED | (prefix >> 5), (prefix & 0x1F) << 3]) + raw
    return _b32(body + crc16(body).to_bytes(2, "little"))


def new_seed(prefix: int) -> str:
    """A fresh random nkeys seed for the given role (operator, account or user)."""
    return encode_seed(secrets.token_bytes(32), prefix)


def keypair(seed: str) -> nkeys.KeyPair:
    return nkeys.from_seed(seed.encode("ascii"))


def public_key(kp: nkeys.KeyPair) -> str:
    key = kp.public_key
    return key.decode("ascii") if isinstance(key, bytes | bytearray) else str(key)


def check_public_key(key: str, prefix: int = PREFIX_USER) -> str:
    """Return ``key`` if it is a well-formed public nkey of the given role, else raise."""
    try:
        raw = _unb32(key)
    except (ValueError, TypeError) as exc:
        raise ValueError("public key is not base32") from exc
    if len(raw) != 35 or raw[0] != prefix:
        raise ValueError("public key has the wrong length or role")
    if crc16(raw[:33]) != int.from_bytes(raw[33:], "little"):
        raise ValueError("public key checksum mismatch")
    return key


def new_user_keypair() -> tuple[str, str]:
    """Generate a user key pair on the node: (public key, secret seed)."""
    seed = new_seed(PREFIX_USER)
    return public_key(keypair(seed)), seed


# --- JWT -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _jti(claims: Mapping[str, Any]) -> str:
    """The JWT id: base32 of a hash of the registered claims, as NATS jwt v2 computes it.

    NATS hashes the JSON of its ClaimsData (aud, exp, iat, iss, name, nbf, sub; empty
    ones left out) with SHA-512/256. The server does not check it; it only has to be
    stable and unique enough to identify a token.
    """
    std = {k: claims[k] for k in ("aud", "exp", "iat", "iss", "name", "nbf", "sub")
           if claims.get(k)}
    try:
        digest = hashlib.new("sha512_256", _compact(std)).digest()
    except ValueError:  # pragma: no cover - OpenSSL without SHA-512/256
        digest = hashlib.sha256(_compact(std)).digest()
    return _b32(digest)


def encode_jwt(claims: Mapping[str, Any], issuer: nkeys.KeyPair) -> str:
    """Sign ``claims`` with ``issuer``; sets ``iss``, ``iat`` (unless given) and ``jti``."""
    body = {k: v for k, v in claims.items() if k != "jti"}
    body["iss"] = public_key(issuer)
    body.setdefault("iat", int(time.time()))
    body = {"jti": _jti(body), **body}
    signing_input = f"{_b64url(_compact(_JWT_HEADER))}.{_b64url(_compact(body))}"
    signature = issuer.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url(signature)}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT, NOT verified (for inspection and tests; the server verifies)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three parts")
    claims: dict[str, Any] = json.loads(_unb64url(parts[1]))
    return claims


def _permission(allow: Sequence[str] | None) -> dict[str, list[str]]:
    # An empty JWT permission means "no restriction", so "nothing" must be a deny-all.
    if allow is None:
        return {}
    if not allow:
        return {"deny": [">"]}
    for subject in allow:
        if not subject or any(c.isspace() for c in subject):
            raise ValueError(f"bad subject in permissions: {subject!r}")
    return {"allow": list(allow)}


def creds_text(jwt: str, seed: str) -> str:
    """A standard NATS ``.creds`` file: the user JWT and the user seed blocks."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


# --- permissions -----------------------------------------------------------------


def _check_token(token: str, what: str) -> str:
    # A node id or inbox token becomes one subject token: no dots, no wildcards.
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"{what} must match {_TOKEN_RE.pattern}: {token!r}")
    return token


def node_inbox_prefix(node_id: str) -> str:
    """The ``inbox_prefix`` a node's NATS client must use (``_INBOX.<node>``)."""
    return f"_INBOX.{_check_token(node_id, 'node id')}"


def node_permissions(node_id: str) -> tuple[list[str], list[str]]:
    """(pub allow, sub allow) for node ``node_id``; replies go via response permissions."""
    _check_token(node_id, "node id")
    pub = [heartbeat_subject(node_id), JOIN]
    sub = [infer_subject(node_id), cancel_subject(node_id), f"{node_inbox_prefix(node_id)}.>"]
    return pub, sub


def joiner_permissions(inbox_token: str) -> tuple[list[str], list[str]]:
    """(pub allow, sub allow) for a node that has not joined yet."""
    return [JOIN], [f"_INBOX.{_check_token(inbox_token, 'inbox token')}.>"]


# --- the authority ---------------------------------------------------------------


@dataclass(frozen=True)
class NatsAuthority:
    """The control plane's signing keys: operator, the wattpool account, the system account.

    The seeds are secrets: whoever holds the account seed can mint any user.
    """

    operator_seed: str = field(repr=False)
    account_seed: str = field(repr=False)
    system_account_seed: str = field(repr=False)
    name: str = "wattpool"
    jetstream: bool = False
    response_ttl_s: float = DEFAULT_RESPONSE_TTL_S
    # iat of the operator and account JWTs: fixed, so that server_config renders the
    # same text every time (nats-server refuses to reload a changed operator JWT).
    issued_at: int = 0

    node_permissions = staticmethod(node_permissions)

    @classmethod
    def create(cls, name: str = "wattpool", *, jetstream: bool = False,
               response_ttl_s: float = DEFAULT_RESPONSE_TTL_S) -> NatsAuthority:
        return cls(new_seed(PREFIX_OPERATOR), new_seed(PREFIX_ACCOUNT),
                   new_seed(PREFIX_ACCOUNT), name, jetstream, response_ttl_s,
                   int(time.time()))

    def rotate_account(self) -> NatsAuthority:
        """The same authority with a new wattpool account key (all users must be reissued)."""
        return replace(self, account_seed=new_seed(PREFIX_ACCOUNT))

    # --- persistence ---

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the seeds as JSON, mode 0600, atomically (temp file + rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": AUTHORITY_FILE_VERSION,
                **{f.name: getattr(self, f.name) for f in fields(self)}}
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NatsAuthority:
        target = Path(path)
        if target.stat().st_mode & 0o077:
            log.warning("%s holds NATS signing seeds but is readable by others; "
                        "chmod 600 it", target)
        data = json.loads(target.read_text())
        if data.get("version") != AUTHORITY_FILE_VERSION:
            raise ValueError(f"{target}: unknown authority file version {data.get('version')}")
        authority = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        authority.public_keys()  # fail now on a damaged seed
        return authority

    # --- keys and JWTs ---

    @property
    def operator_public_key(self) -> str:
        return public_key(keypair(self.operator_seed))

    @property
    def account_public_key(self) -> str:
        return public_key(keypair(self.account_seed))

    @property
    def system_account_public_key(self) -> str:
        return public_key(keypair(self.system_account_seed))

    def public_keys(self) -> dict[str, str]:
        return {"operator": self.operator_public_key, "account": self.account_public_key,
                "system_account": self.system_account_public_key}

    def operator_jwt(self) -> str:
        op = keypair(self.operator_seed)
        claims = {"name": self.name, "sub": public_key(op), "iat": self.issued_at,
                  "nats": {"system_account": self.system_account_public_key,
                           "type": "operator", "version": 2}}
        return encode_jwt(claims, op)

    def _account_jwt(self, seed: str, name: str, jetstream: bool) -> str:
        limits: dict[str, Any] = {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                                  "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}
        if jetstream:
            limits.update({"mem_storage": -1, "disk_storage": -1, "streams": -1,
                           "consumer": -1})
        claims = {"name": name, "sub": public_key(keypair(seed)), "iat": self.issued_at,
                  "nats": {"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                           "type": "account", "version": 2}}
        return encode_jwt(claims, keypair(self.operator_seed))

    def account_jwt(self) -> str:
        return self._account_jwt(self.account_seed, self.name, self.jetstream)

    def system_account_jwt(self) -> str:
        return self._account_jwt(self.system_account_seed, "SYS", False)

    def server_config(self, port: int, host: str = "127.0.0.1", extra: str = "") -> str:
        """A nats-server config in operator mode, accounts preloaded in memory."""
        account, system = self.account_public_key, self.system_account_public_key
        return (
            "# Generated by wattpool (control/natsauth.py). Regenerate, do not edit.\n"
            f"host: {json.dumps(host)}\n"
            f"port: {int(port)}\n"
            f"operator: {json.dumps(self.operator_jwt())}\n"
            f"system_account: {json.dumps(system)}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {json.dumps(account)}: {json.dumps(self.account_jwt())}\n"
            f"  {json.dumps(system)}: {json.dumps(self.system_account_jwt())}\n"
            "}\n"
            + (f"{extra.rstrip()}\n" if extra.strip() else "")
        )

    def user_jwt_for_public_key(
        self,
        user_public_key: str,
        name: str,
        pub_allow: Sequence[str] | None,
        sub_allow: Sequence[str] | None,
        allow_responses: bool = False,
        expires_at: int | None = None,
    ) -> str:
        """A user JWT for a key pair generated elsewhere (the seed never leaves the node).

        ``None`` permissions mean unrestricted, ``[]`` means nothing. With
        ``allow_responses`` the user may publish any number of messages to the reply
        subject of each message it receives, for ``response_ttl_s`` after receipt.
        """
        nats: dict[str, Any] = {
            "pub": _permission(pub_allow), "sub": _permission(sub_allow),
            "subs": -1, "data": -1, "payload": -1, "bearer_token": False,
            "type": "user", "version": 2,
        }
        if allow_responses:
            # max -1: unlimited messages; ttl (ns) > 0 bounds the window and lets the
            # server prune its per-connection reply table (max 0 / ttl 0 mean 1 / 2 min).
            nats["resp"] = {"max": -1, "ttl": int(self.response_ttl_s * 1e9)}
        claims: dict[str, Any] = {"name": name,
                                  "sub": check_public_key(user_public_key, PREFIX_USER),
                                  "nats": nats}
        if expires_at is not None:
            claims["exp"] = int(expires_at)
        return encode_jwt(claims, keypair(self.account_seed))

    def user_creds(
        self,
        name: str,
        pub_allow: Sequence[str] | None,
        sub_allow: Sequence[str] | None,
        allow_responses: bool = False,
        expires_at: int | None = None,
    ) -> tuple[str, str]:
        """A new user key pair and its JWT: (user public key, ``.creds`` text)."""
        user_pub, seed = new_user_keypair()
        jwt = self.user_jwt_for_public_key(user_pub, name, pub_allow, sub_allow,
                                           allow_responses, expires_at)
        return user_pub, creds_text(jwt, seed)

    def node_jwt(self, node_id: str, user_public_key: str,
                 expires_at: int | None = None) -> str:
        """The JWT for node ``node_id`` that generated its own key pair."""
        pub, sub = node_permissions(node_id)
        return self.user_jwt_for_public_key(user_public_key, f"node:{node_id}", pub, sub,
                                            allow_responses=True, expires_at=expires_at)

    def node_creds(self, node_id: str, expires_at: int | None = None) -> tuple[str, str]:
        """Key pair and creds for node ``node_id`` minted here (when the node cannot)."""
        pub, sub = node_permissions(node_id)
        return self.user_creds(f"node:{node_id}", pub, sub, allow_responses=True,
                               expires_at=expires_at)

    def service_creds(self, name: str = "wattpool-service",
                      expires_at: int | None = None) -> tuple[str, str]:
        """Full-access credentials for the control plane and gateways."""
        return self.user_creds(name, None, None, expires_at=expires_at)

    def joiner_creds(self, inbox_token: str, expires_at: int) -> tuple[str, str]:
        """Short-lived credentials that may only ask to join and read their own replies."""
        pub, sub = joiner_permissions(inbox_token)
        return self.user_creds(f"joiner:{inbox_token}", pub, sub, expires_at=expires_at)
