"""The coordinator CA and the agent side of enrollment, without a network."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from agent.identity import EnrollmentRefused, JoinToken, ca_sha256, new_key_and_csr
from coordinator.security import tokens
from coordinator.security.pki import CertificateAuthority, CertificateRequestError, node_id_from_certificate


def test_ca_is_created_once_with_a_private_key_file(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    again = CertificateAuthority.load_or_create(tmp_path)
    assert again.sha256 == ca.sha256 == ca_sha256(ca.cert_pem)


def test_node_certificates_carry_our_subject_not_the_agents(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    _, csr = new_key_and_csr()
    issued = ca.sign_node(csr, "node-42", dt.timedelta(days=30))
    assert node_id_from_certificate(issued.pem) == ("node-42", issued.serial)
    cert = x509.load_pem_x509_certificate(issued.pem)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=6)
    cert.verify_directly_issued_by(ca.cert)


def test_a_garbage_csr_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    with pytest.raises(CertificateRequestError):
        ca.sign_node(b"not a csr", "n", dt.timedelta(days=1))


def test_join_tokens_pin_the_ca_and_parse_back() -> None:
    sessions = ("c1.example.net:7443", "[2001:db8::1]:7443")
    token_id, secret, token = tokens.new_join_token("ab" * 32, sessions, "c1.example.net:7444")
    parsed = JoinToken.parse(token)
    assert (parsed.ca_sha256, parsed.token_id, parsed.secret) == ("ab" * 32, token_id, secret)
    assert (parsed.coordinators, parsed.enroll_address) == (sessions, "c1.example.net:7444")
    assert len(secret) >= 43  # 32 random bytes
    # A token of the first scheme (no addresses) still reads.
    old = JoinToken.parse(f"MOORAGE1::{'AB' * 32}::{token_id}.{secret}")
    assert (old.ca_sha256, old.token_id, old.coordinators, old.enroll_address) == (
        "ab" * 32,
        token_id,
        (),
        "",
    )
    ca = "ab" * 32
    for bad in (
        "",
        "MOORAGE1::short::a.b",
        f"MOORAGE2::{ca}::a.b",
        f"MOORAGE1::{ca}::nodot",
        f"MOORAGE2::{ca}::::h:1::a.b",
        f"MOORAGE2::{ca}::h:notaport::h:1::a.b",
        f"MOORAGE2::{ca}::h:1::h:1::nodot",
    ):
        with pytest.raises(EnrollmentRefused):
            JoinToken.parse(bad)


def test_api_keys_are_prefixed_random_and_stored_as_digests() -> None:
    a, b = tokens.new_api_key(), tokens.new_api_key()
    assert a != b and a.startswith("mrg_") and len(a) >= 4 + 43
    assert tokens.digest(a) != a and len(tokens.digest(a)) == 64
