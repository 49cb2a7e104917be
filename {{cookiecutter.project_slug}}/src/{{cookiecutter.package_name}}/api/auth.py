"""Who is calling and what they may do: an API key (api/keys.py) or an OIDC bearer token,
checked against the scopes each route asks for, then the caller's rate limit.

A missing or bad credential is 401, a missing scope 403, each with the reason; both are
logged with the key's name (never the key) and counted in `api_auth_failures_total`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from {{ cookiecutter.package_name }}.api.admission import RateLimit
from {{ cookiecutter.package_name }}.api.deps import app_state
from {{ cookiecutter.package_name }}.api.keys import KeyStore, Scope
from {{ cookiecutter.package_name }}.api.metrics import AUTH_FAILURES
from {{ cookiecutter.package_name }}.settings import Settings

logger = logging.getLogger(__name__)

API_KEY = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key (`python -m {{ cookiecutter.package_name }}.api.keys create`)",
)
BEARER = HTTPBearer(
    auto_error=False,
    description="An OIDC access token (when the API is configured with API_OIDC_ISSUER)",
)
# What every protected route may answer besides its own codes.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No credential, or an unknown key or invalid token"},
    403: {"description": "The credential lacks the scope this operation needs"},
    429: {"description": "Over the caller's rate limit (see Retry-After)"},
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name is recorded as the owner of what it submits."""

    name: str
    scopes: frozenset[str]

    def may_see(self, owner: str | None) -> bool:
        """A caller reads and cancels its own tasks; tasks:admin reads and cancels all."""
        return Scope.TASKS_ADMIN in self.scopes or (owner is not None and owner == self.name)


ANONYMOUS = Principal("anonymous", frozenset(Scope))


class Refused(HTTPException):
    def __init__(self, code: int, reason: str, who: str | None, detail: str) -> None:
        headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key", Bearer'} if code == 401 else None
        super().__init__(code, detail=detail, headers=headers)
        AUTH_FAILURES.labels(reason).inc()
        logger.warning("request refused", extra={"reason": reason, "caller": who})


class OidcTokens:
    """Validates bearer tokens: signature (JWKS, cached), issuer, audience, expiry."""

    def __init__(self, settings: Settings) -> None:
        self._jwks = jwt.PyJWKClient(
            settings.api_oidc_jwks_url,
            cache_jwk_set=True,
            lifespan=settings.api_oidc_jwks_cache_seconds,
            timeout=settings.api_readiness_timeout,
        )
        self._issuer = settings.api_oidc_issuer
        self._audience = settings.api_oidc_audience
        self._algorithms = list(settings.api_oidc_algorithms)
        self._claim = settings.api_oidc_scopes_claim

    def principal(self, token: str) -> Principal:
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail="token issuer's keys unreachable"
            ) from exc
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as exc:
            raise Refused(401, "invalid_token", None, f"invalid bearer token: {exc}") from exc
        granted = claims.get(self._claim, "")
        scopes = granted.split() if isinstance(granted, str) else list(granted)
        return Principal(f"oidc:{claims['sub']}", frozenset(scopes) & frozenset(Scope))


class Authenticator:
    """Turns a request's credential into a Principal (one per API process)."""

    def __init__(self, settings: Settings) -> None:
        self.open = settings.api_auth == "none"
        self.keys = KeyStore(settings.api_keys.get_secret_value(), settings.api_keys_file)
        self.tokens = OidcTokens(settings) if settings.api_oidc_issuer else None
        if not self.open and self.tokens is None and self.keys.empty and not settings.api_keys_file:
            raise RuntimeError(
                "API_AUTH=keys but no key is configured: create one with `python -m"
                " {{ cookiecutter.package_name }}.api.keys --file keys.json create NAME --scope ...`"
                " and set API_KEYS_FILE (or API_OIDC_ISSUER for bearer tokens)"
            )

    def principal(self, key: str | None, bearer: str | None) -> Principal:
        if self.open:
            return ANONYMOUS
        if key:
            entry = self.keys.find(key)
            if entry is None:
                raise Refused(401, "unknown_key", None, "unknown API key")
            return Principal(entry.name, frozenset(entry.scopes))
        if bearer:
            if self.tokens is None:
                raise Refused(401, "invalid_token", None, "bearer tokens are not enabled here")
            return self.tokens.principal(bearer)
        raise Refused(401, "missing", None, "an X-API-Key header or a bearer token is required")


AuthenticatorDep = Annotated[Authenticator, Depends(app_state("authenticator"))]
RateLimitDep = Annotated[RateLimit, Depends(app_state("rate_limit"))]


def caller(
    scopes: SecurityScopes,
    authenticator: AuthenticatorDep,
    limit: RateLimitDep,
    key: Annotated[str | None, Security(API_KEY)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
) -> Principal:
    """The route's dependency: authenticate, check its scopes, then the rate limit."""
    principal = authenticator.principal(key, bearer.credentials if bearer else None)
    missing = [scope for scope in scopes.scopes if scope not in principal.scopes]
    if missing:
        raise Refused(
            403,
            "forbidden",
            principal.name,
            f"{principal.name} lacks scope {', '.join(missing)} for this operation",
        )
    limit.admit(principal.name)
    return principal


def needs(*scopes: Scope) -> Any:
    """`caller: Annotated[Principal, needs(Scope.TASKS_READ)]` in a route's signature."""
    return Security(caller, scopes=[scope.value for scope in scopes])
