"""What keeps the agent small: its steady state loads neither cryptography (enrollment and renewal only)
nor anything of the coordinator's, and the certificate dates it checks are read without them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity import Identity, ca_sha256, validity
from bench.daemons import REPO

#: The coordinator extra's packages (pyproject.toml) and cryptography: none may load in a running agent.
NOT_IN_THE_AGENT = (
    "aiohttp",
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "argon2",
    "jwt",
    "pycountry",
    "jinja2",
    "coordinator",
    "cryptography",
    # The engine is spoken to by agent/runtime/engine_api.py: docker-py and its HTTP stack stay out.
    "docker",
    "requests",
    "urllib3",
    # Its figures are served by agent/exposition.py.
    "prometheus_client",
    # Its options are a dataclass that common/config.py checks.
    "pydantic",
    "pydantic_core",
)

_KEY = ec.generate_private_key(ec.SECP256R1())
#: Long enough that its length takes the long DER form.
ISSUER = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"unit {n} " * 6) for n in range(8)])


def _cert(not_before: dt.datetime, not_after: dt.datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ISSUER)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


_TIMES = st.datetimes(
    min_value=dt.datetime(1951, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
).map(lambda t: t.replace(microsecond=0))


@settings(max_examples=60, deadline=None)
@given(_TIMES, _TIMES)
def test_certificate_dates_read_as_cryptography_reads_them(a: dt.datetime, b: dt.datetime) -> None:
    """UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280), long and short lengths alike."""
    pem = _cert(min(a, b), max(a, b))
    parsed = x509.load_pem_x509_certificate(pem)
    assert validity(pem) == (
        parsed.not_valid_before_utc.timestamp(),
        parsed.not_valid_after_utc.timestamp(),
    )


def test_a_chain_reads_as_its_first_certificate() -> None:
    leaf = _cert(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    ca = _cert(dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2040, 1, 1, tzinfo=dt.UTC))
    node = Identity("n", b"", leaf + ca, ca)
    assert node.not_before() == dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    assert node.not_after() == dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    der = x509.load_pem_x509_certificate(ca).public_bytes(serialization.Encoding.DER)
    assert ca_sha256(b"junk before\n" + ca) == hashlib.sha256(der).hexdigest()


def test_a_running_agent_loads_nothing_of_the_coordinator_nor_cryptography() -> None:
    """Everything the agent imports to run (not to enroll): the module graph of `moorage-agent` up to its
    event loop."""
    probe = "import json, sys, agent.main; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True, timeout=60
    )
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded.intersection(NOT_IN_THE_AGENT), sorted(loaded.intersection(NOT_IN_THE_AGENT))
