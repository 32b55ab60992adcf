"""AS benchmarks: token issuance (batch of 100), token redemption rate, a full registration.

    .venv/bin/python benchmarks/bench_as.py [--repeat N] [--redeem N] [--concurrency C]
                                            [--engines sqlite,postgres]

* **issuance**: server time of one ``request_tokens`` call for 100 tokens, through
  ``AsService.process`` (decode, Client Credential check with the full chain, allowance charged in the
  database, batch evaluation with one proof), median of ``--repeat``; the evaluation alone is shown too.
* **redemption**: tokens accepted per second by ``TokenRedeemer.redeem`` (decode, key lookup, PRF check,
  spent-token insert with its own commit), sequentially and from ``--concurrency`` tasks; and the
  PRF check alone.
* **registration**: ``init_user_registration`` + ``finish_user_registration`` (two OPAQUE messages, a CSR
  signed, the user, client, queue and two connection packages stored), server time and the whole flow
  including the client side (Argon2 dominates the latter).

PostgreSQL comes from ``PHX_TEST_POSTGRES_URL`` (a fresh schema, dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg  # noqa: E402

from phx.auth import AsService  # noqa: E402
from phx.auth.client import client_request, plain_request, sign_connection_package  # noqa: E402
from phx.auth.messages import (  # noqa: E402
    AsCredentialsResponse,
    ConnectionPackagePayload,
    Empty,
    FinishUserRegistrationParams,
    InitUserRegistrationParams,
    InitUserRegistrationResponse,
    RequestToken,
    TokenKeysResponse,
    TokenResponse,
)
from phx.auth.opaque import client_registration_finish, client_registration_start  # noqa: E402
from phx.config import AsConfig  # noqa: E402
from phx.credentials import ClientCredential, ExpirationData, new_client_csr  # noqa: E402
from phx.crypto import SUITE_1  # noqa: E402
from phx.identifiers import ClientId, Fqdn, UserId  # noqa: E402
from phx.privacypass import finalize_tokens, phoenix_challenge, request_tokens  # noqa: E402
from phx.storage import Database, migrate, open_database  # noqa: E402

CS = SUITE_1
DOMAIN = Fqdn("bench.test")
DAY = 86_400
BATCH = 100
POSTGRES_URL = os.environ.get("PHX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@asynccontextmanager
async def database(engine: str, pool: int) -> AsyncIterator[Database]:
    if engine == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            db = await open_database(f"sqlite://{tmp}/bench.db")
            try:
                yield db
            finally:
                await db.close()
        return
    schema = f"bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.close()
    sep = "&" if "?" in POSTGRES_URL else "?"
    db = await open_database(f"{POSTGRES_URL}{sep}search_path={schema}", pg_max_size=pool)
    try:
        yield db
    finally:
        await db.close()
        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def register(service: AsService, now: int) -> tuple[float, float, ClientCredential, bytes]:
    """One full registration; returns (server seconds, total seconds, credential, signing key)."""
    server = 0.0
    total_start = time.perf_counter()
    creds = AsCredentialsResponse.decode(
        await service.process("get_as_credentials", plain_request(Empty()).encode(), now)
    )
    inter = max(creds.as_intermediate_credentials, key=lambda c: c.expiration_data.not_after)
    client_id = ClientId.random(UserId.random(DOMAIN))
    csr, key = new_client_csr(client_id, inter, ExpirationData(now, now + 30 * DAY))
    password = b"a benchmark password"
    reg = client_registration_start(password)
    body = plain_request(InitUserRegistrationParams(csr, reg.request)).encode()
    t = time.perf_counter()
    init = InitUserRegistrationResponse.decode(await service.process("init_user_registration", body, now))
    server += time.perf_counter() - t
    record = client_registration_finish(password, reg, init.opaque_registration_response)
    cred = init.client_credential
    packages = []
    for _ in range(2):
        _, pk = CS.generate_hpke_key_pair()
        payload = ConnectionPackagePayload(pk, ExpirationData(now, now + 7 * DAY))
        packages.append(sign_connection_package(payload, cred, key))
    queue_pk = CS.generate_hpke_key_pair()[1]
    params = FinishUserRegistrationParams(queue_pk, os.urandom(CS.nh), tuple(packages), record)
    request = client_request(
        "finish_user_registration", params, as_domain=DOMAIN, credential=cred, private_key=key, now=now
    )
    t = time.perf_counter()
    await service.process("finish_user_registration", request.encode(), now)
    server += time.perf_counter() - t
    return server, time.perf_counter() - total_start, cred, key


async def bench_engine(engine: str, args: argparse.Namespace) -> None:
    async with database(engine, args.concurrency) as db:
        await migrate(db, "as")
        config = replace(AsConfig(), token_allowance=10**9, max_tokens_per_request=BATCH)
        now = int(time.time())
        service = AsService(db, DOMAIN, config, clock=lambda: now)
        await service.keys.ensure(now)
        await service.keys.opaque_setup(now)
        await register(service, now)  # warm-up

        regs = [await register(service, now) for _ in range(args.registrations)]
        reg_server = statistics.median(r[0] for r in regs)
        reg_total = statistics.median(r[1] for r in regs)
        _, _, cred, key = regs[-1]

        keys = TokenKeysResponse.decode(
            await service.process("get_token_keys", plain_request(Empty()).encode(), now)
        )
        challenge = phoenix_challenge(DOMAIN)
        issue_times = []
        tokens: list[bytes] = []
        evaluate_times = []
        issuer = (await service.token_keys.current(now)).key
        for i in range(args.repeat + 1):
            pending = request_tokens(keys.public_key, challenge, BATCH)
            body = client_request(
                "request_tokens",
                RequestToken(pending.request),
                as_domain=DOMAIN,
                credential=cred,
                private_key=key,
                now=now,
            ).encode()
            t = time.perf_counter()
            answer = await service.process("request_tokens", body, now)
            elapsed = time.perf_counter() - t
            t = time.perf_counter()
            issuer.issue(pending.request, max_batch=BATCH)
            evaluate = time.perf_counter() - t
            if i:  # the first round warms caches
                issue_times.append(elapsed)
                evaluate_times.append(evaluate)
            if len(tokens) < 2 * args.redeem + 2000:
                tokens.extend(
                    t.encode() for t in finalize_tokens(pending, TokenResponse.decode(answer).token_response)
                )
        while len(tokens) < 2 * args.redeem + 2000:
            pending = request_tokens(keys.public_key, challenge, BATCH)
            body = client_request(
                "request_tokens",
                RequestToken(pending.request),
                as_domain=DOMAIN,
                credential=cred,
                private_key=key,
                now=now,
            ).encode()
            answer = await service.process("request_tokens", body, now)
            tokens.extend(
                t.encode() for t in finalize_tokens(pending, TokenResponse.decode(answer).token_response)
            )

        redeemer = service.redeemer
        sequential = tokens[: args.redeem]
        t = time.perf_counter()
        for tok in sequential:
            await redeemer.redeem(tok, now)
        seq_rate = len(sequential) / (time.perf_counter() - t)

        concurrent = tokens[args.redeem : 2 * args.redeem]
        queue = list(concurrent)

        async def worker() -> None:
            while queue:
                await redeemer.redeem(queue.pop(), now)

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        con_rate = len(concurrent) / (time.perf_counter() - t)

        check_only = tokens[2 * args.redeem : 2 * args.redeem + 2000]
        t = time.perf_counter()
        for tok in check_only:
            await redeemer.check(tok, now)
        check_rate = len(check_only) / (time.perf_counter() - t)

        issue_ms, evaluate_ms = ms(statistics.median(issue_times)), ms(statistics.median(evaluate_times))
        print(
            f"{engine:8s} token issuance, batch of {BATCH}: median {issue_ms} server time "
            f"(evaluation and proof alone: {evaluate_ms}; goal <= 20 ms)\n"
            f"{engine:8s} token redemption: {seq_rate:,.0f} tokens/s sequential, "
            f"{con_rate:,.0f} tokens/s from {args.concurrency} tasks "
            f"(checks without the spent-token write: {check_rate:,.0f}/s)\n"
            f"{engine:8s} full registration: median {ms(reg_server)} server time, "
            f"{ms(reg_total)} with the client side (OPAQUE with Argon2)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=30, help="token issuance requests to time")
    parser.add_argument("--redeem", type=int, default=2000, help="tokens redeemed per redemption run")
    parser.add_argument("--registrations", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args()
    for engine in args.engines.split(","):
        asyncio.run(bench_engine(engine.strip(), args))


if __name__ == "__main__":
    main()
