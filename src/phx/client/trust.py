"""Privacy Pass tokens and AS credentials of every homeserver the client talks to, cached in its state.

* :class:`TokenCache` — tokens per homeserver domain, obtained in batches from ``as.<domain>`` (the
  client's own AS or a remote one, which checks the client's credential against the client's AS) and
  refilled when the cache runs dry. A token leaves the cache before the request that spends it, so no
  token is ever presented twice even if the request fails half-way.
* :class:`CredentialCache` — each domain's AS credentials (roots, intermediates, revocations), fetched
  over TLS from ``as.<domain>`` (the book's trust anchor for a homeserver's keys) and kept for an hour;
  client credentials are verified against them (:meth:`CredentialCache.verify_client`), with one re-fetch
  when verification fails on a cached set (the AS may have rotated or revoked since).
"""

from __future__ import annotations

from collections.abc import Callable

from phx.auth.keys import AsCredentialSet
from phx.auth.messages import AsCredentialsResponse, RequestToken
from phx.credentials import ClientCredential, VerifiedClientChain
from phx.errors import PhxError
from phx.identifiers import Fqdn
from phx.privacypass import finalize_tokens, phoenix_challenge, request_tokens

from .api import Api, ClientAuth
from .state import ClientState

__all__ = ["CredentialCache", "TokenCache"]

#: Tokens requested per batch (the AS caps a batch at ``as.max_tokens_per_request``, 100 by default).
TOKEN_BATCH = 25
CREDENTIAL_TTL = 3600


class TokenCache:
    def __init__(
        self,
        state: ClientState,
        api: Api,
        auth: Callable[[], ClientAuth],
        clock: Callable[[], int],
        *,
        batch: int = TOKEN_BATCH,
    ) -> None:
        self.state = state
        self.api = api
        self.auth = auth
        self.clock = clock
        self.batch = batch
        self.fetched = 0

    async def take(self, domain: Fqdn) -> bytes:
        token = self.state.take_token(domain.value)
        if token is None:
            await self.refill(domain)
            token = self.state.take_token(domain.value)
            if token is None:
                raise PhxError(f"as.{domain} issued no tokens")
        return token

    async def invalidate(self, domain: Fqdn) -> None:
        self.state.drop_tokens(domain.value)

    async def refill(self, domain: Fqdn) -> None:
        auth = self.auth()
        keys = await self.api.token_keys(domain)
        # A remote AS issues to us under its key for other homeservers' clients.
        key = keys.key_for(auth.credential.client_id.domain, domain)
        pending = request_tokens(key, phoenix_challenge(domain), self.batch)
        response = await self.api.request_tokens(domain, RequestToken(pending.request), auth)
        tokens = finalize_tokens(pending, response.token_response)
        self.state.add_tokens(domain.value, [t.encode() for t in tokens], self.clock())
        self.fetched += len(tokens)


class CredentialCache:
    def __init__(
        self, state: ClientState, api: Api, clock: Callable[[], int], *, ttl: int = CREDENTIAL_TTL
    ) -> None:
        self.state = state
        self.api = api
        self.clock = clock
        self.ttl = ttl

    async def credentials(self, domain: Fqdn, *, refresh: bool = False) -> AsCredentialSet:
        now = self.clock()
        cached = None if refresh else self.state.as_credentials(domain.value)
        if cached is not None and now - cached[1] < self.ttl:
            response = AsCredentialsResponse.decode(cached[0])
        else:
            response = await self.api.as_credentials(domain)
            self.state.put_as_credentials(domain.value, response.encode(), now)
        return AsCredentialSet(
            domain,
            response.as_credentials,
            response.as_intermediate_credentials,
            frozenset(response.revoked_certs),
        )

    async def verify_client(self, credential: ClientCredential) -> VerifiedClientChain:
        """The full chain AS root → intermediate → client credential, for the client's own domain."""
        domain = credential.client_id.domain
        now = self.clock()
        try:
            return (await self.credentials(domain)).verify_client(credential, now)
        except PhxError:
            return (await self.credentials(domain, refresh=True)).verify_client(credential, now)
