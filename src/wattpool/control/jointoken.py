"""The join token a site operator pastes into `wattpool node join --token`.

``wpj_<secret>`` alone when the fleet bus has no NATS auth. With NATS auth the
token also carries short-lived *joiner* credentials (they may only ask to join and
read their own replies): ``wpj_<secret>.<base64url JSON {jwt, seed, inbox}>``.
The control plane stores only the sha256 of the secret part.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass


class BadToken(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class JoinerCreds:
    jwt: str
    seed: str
    inbox: str  # the inbox prefix token its permissions allow: _INBOX.<inbox>


@dataclass(frozen=True, slots=True)
class JoinToken:
    secret: str
    joiner: JoinerCreds | None = None

    def encode(self) -> str:
        if self.joiner is None:
            return self.secret
        blob = json.dumps({"jwt": self.joiner.jwt, "seed": self.joiner.seed,
                           "inbox": self.joiner.inbox}, separators=(",", ":"))
        return f"{self.secret}.{base64.urlsafe_b64encode(blob.encode()).decode().rstrip('=')}"

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        text = text.strip()
        secret, _, blob = text.partition(".")
        if not secret.startswith("wpj_") or len(secret) < 20:
            raise BadToken("this is not a wattpool join token (they start with 'wpj_')")
        if not blob:
            return cls(secret)
        try:
            data = json.loads(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
            return cls(secret, JoinerCreds(str(data["jwt"]), str(data["seed"]),
                                           str(data["inbox"])))
        except (ValueError, KeyError, TypeError):
            raise BadToken("the join token is damaged; copy it again in full") from None
