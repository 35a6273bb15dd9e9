"""OAuth state: connected apps (clients), users, access/refresh tokens, codes, login rate."""

from __future__ import annotations

import secrets
import string
import time
from collections import deque
from dataclasses import dataclass, field

from .ids import IdFactory

DEFAULT_CLIENT_ID = "sim-client-id"
DEFAULT_CLIENT_SECRET = "sim-client-secret"  # noqa: S105 - the simulator's public default
DEFAULT_REFRESH_TOKEN = "sim-refresh-token"  # noqa: S105 - the simulator's public default
DEFAULT_USERNAME = "integration@sim.example"
DEFAULT_APP_NAME = "sfworker"

MAX_APPROVALS_PER_USER = 5
CODE_LIFETIME_SECONDS = 15 * 60
_TOKEN_CHARS = string.ascii_letters + string.digits + "._"
_ALNUM = string.ascii_letters + string.digits


def _random(chars: str, length: int) -> str:
    return "".join(secrets.choice(chars) for _ in range(length))


@dataclass
class Client:
    client_id: str
    client_secret: str
    app_name: str = DEFAULT_APP_NAME
    run_as: bool = True
    rotation: bool = False
    usernames: list[str] = field(default_factory=lambda: [DEFAULT_USERNAME])
    jwt_public_key_pem: str | None = None
    # The app's Callback URLs; None accepts any redirect_uri (the simulator's lenient default).
    callback_urls: list[str] | None = None
    # External Client Apps require PKCE by default; the simulator's default client does not.
    require_pkce: bool = False

    @property
    def run_as_user(self) -> str:
        return self.usernames[0] if self.usernames else DEFAULT_USERNAME


@dataclass
class AccessToken:
    token: str
    client_id: str
    username: str
    scope: str
    chain_id: str | None
    issued_at: float  # epoch seconds
    last_used: float  # monotonic seconds


@dataclass
class RefreshToken:
    token: str
    client_id: str
    username: str
    scope: str
    chain_id: str
    issued_at: float
    active: bool = True
    rotated_out: bool = False


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    username: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str
    created: float
    used: bool = False


class AuthState:
    def __init__(self, ids: IdFactory, org_id: str) -> None:
        self.ids = ids
        self.org_id = org_id
        self.clients: dict[str, Client] = {}
        self.users: dict[str, str] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.codes: dict[str, AuthCode] = {}
        self.processing: set[str] = set()
        self.logins: dict[str, deque[float]] = {}
        self._chains = 0
        # Added to the monotonic clock of sessions, codes and the login rate: a test moves time
        # on (`POST /_sim/clock`) instead of sleeping through an inactivity timeout.
        self.skew = 0.0
        # What the admin does on the authorize page: approve (as `consent_username`, else the
        # client's first user) or deny.
        self.consent_approve = True
        self.consent_username: str | None = None

    def now(self) -> float:
        """Monotonic seconds, as sessions, authorization codes and the login rate see them."""
        return time.monotonic() + self.skew

    # ---- clients and users -------------------------------------------------------------------
    def set_client(self, client: Client, refresh_tokens: list[str]) -> None:
        old = self.clients.get(client.client_id)
        if old is not None:
            for rt in [r for r in self.refresh.values() if r.client_id == client.client_id]:
                del self.refresh[rt.token]
            for at in [a for a in self.access.values() if a.client_id == client.client_id]:
                del self.access[at.token]
        self.clients[client.client_id] = client
        for token in refresh_tokens:
            self.new_refresh(client, client.run_as_user, "api refresh_token", token=token)

    def user_id(self, username: str) -> str:
        if username not in self.users:
            self.users[username] = self.ids.new("005")
        return self.users[username]

    def username_of(self, user_id: str) -> str | None:
        return next((name for name, uid in self.users.items() if uid == user_id), None)

    # ---- tokens ------------------------------------------------------------------------------
    def new_chain(self) -> str:
        self._chains += 1
        return f"chain-{self._chains}"

    def new_refresh(
        self,
        client: Client,
        username: str,
        scope: str,
        chain_id: str | None = None,
        token: str | None = None,
    ) -> RefreshToken:
        rt = RefreshToken(
            token=token or "5Aep861" + _random(_TOKEN_CHARS, 80),
            client_id=client.client_id,
            username=username,
            scope=scope,
            chain_id=chain_id or self.new_chain(),
            issued_at=time.time(),
        )
        self.refresh[rt.token] = rt
        return rt

    def new_access(
        self, client: Client, username: str, scope: str, chain_id: str | None = None
    ) -> AccessToken:
        at = AccessToken(
            token=f"{self.org_id[:15]}!AQ" + _random(_TOKEN_CHARS, 94),
            client_id=client.client_id,
            username=username,
            scope=scope,
            chain_id=chain_id,
            issued_at=time.time(),
            last_used=self.now(),
        )
        self.access[at.token] = at
        return at

    def valid_refresh_tokens(self, client_id: str) -> list[str]:
        return [rt.token for rt in self.refresh.values() if rt.client_id == client_id and rt.active]

    def revoke_chain(self, chain_id: str) -> None:
        for rt in self.refresh.values():
            if rt.chain_id == chain_id:
                rt.active = False
        for at in [a for a in self.access.values() if a.chain_id == chain_id]:
            del self.access[at.token]

    def enforce_approval_limit(self, client_id: str, username: str) -> None:
        """At most 5 approvals (refresh chains) per user per app; the oldest is revoked."""
        chains: dict[str, float] = {}
        for rt in self.refresh.values():
            if rt.client_id == client_id and rt.username == username and rt.active:
                chains[rt.chain_id] = min(chains.get(rt.chain_id, rt.issued_at), rt.issued_at)
        oldest = sorted(chains, key=lambda c: chains[c])
        for chain_id in oldest[: max(0, len(oldest) - MAX_APPROVALS_PER_USER)]:
            self.revoke_chain(chain_id)

    def session(self, token: str | None, timeout: float, *, touch: bool) -> AccessToken | None:
        """The live session for a bearer token; using it extends it (inactivity timeout)."""
        if not token:
            return None
        at = self.access.get(token)
        if at is None:
            return None
        now = self.now()
        if now - at.last_used > timeout:
            del self.access[token]
            return None
        if touch:
            at.last_used = now
        return at

    def expire_all_sessions(self) -> None:
        self.access.clear()

    # ---- authorization codes -----------------------------------------------------------------
    def new_code(
        self,
        client: Client,
        redirect_uri: str,
        scope: str,
        challenge: str | None,
        method: str,
    ) -> AuthCode:
        code = AuthCode(
            code="aPrx" + _random(_ALNUM, 60),
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            username=self.consent_username or client.run_as_user,
            scope=scope,
            code_challenge=challenge,
            code_challenge_method=method,
            created=self.now(),
        )
        self.codes[code.code] = code
        return code

    # ---- login rate --------------------------------------------------------------------------
    def login_allowed(self, user_key: str, per_hour: int) -> bool:
        """Record one token request for `user_key`; False when the hourly rate is exceeded."""
        now = self.now()
        window = self.logins.setdefault(user_key, deque())
        while window and now - window[0] > 3600:
            window.popleft()
        if len(window) >= per_hour:
            return False
        window.append(now)
        return True
