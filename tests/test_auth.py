"""Unit tests for the AUTH_MODE=harbor pieces of harbor_router.auth: no I/O."""

from __future__ import annotations

import base64
import json

import pytest

from harbor_router import auth, errors


def _part(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _answer(claims: object, key: str = "token") -> bytes:
    token = f"{_part({'alg': 'RS256'})}.{_part(claims)}.c2ln"
    return json.dumps({key: token}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_decisions_expire_and_refusals_expire_sooner() -> None:
    clock = Clock()
    decisions = auth.Decisions(60.0, clock=clock)
    cred = decisions.credential(b"Basic YTpi")
    decisions.put(cred, "ghcr", "acme/tool", auth.ALLOWED)
    decisions.put(cred, "quay", "acme/tool", auth.DENIED)
    assert decisions.get(cred, "ghcr", "acme/tool") == auth.ALLOWED
    assert decisions.get(cred, "quay", "acme/tool") == auth.DENIED
    assert decisions.get(cred, "ghcr", "acme/other") is None
    clock.now += auth.NEGATIVE_TTL_MAX
    assert decisions.get(cred, "quay", "acme/tool") is None
    assert decisions.get(cred, "ghcr", "acme/tool") == auth.ALLOWED
    clock.now += 60.0
    assert decisions.get(cred, "ghcr", "acme/tool") is None
    assert len(decisions) == 0


def test_decisions_are_bounded_and_ttl_zero_caches_nothing() -> None:
    decisions = auth.Decisions(60.0, max_entries=3)
    for i in range(10):
        decisions.put(b"k", "p", f"r{i}", auth.ALLOWED)
    assert len(decisions) == 3
    assert decisions.get(b"k", "p", "r9") == auth.ALLOWED
    assert decisions.get(b"k", "p", "r0") is None
    off = auth.Decisions(0.0)
    off.put(b"k", "p", "r", auth.ALLOWED)
    assert len(off) == 0


def test_credentials_are_kept_only_as_keyed_hashes() -> None:
    value = b"Basic " + base64.b64encode(b"alice:S3cret-pw")
    one, other = auth.Decisions(60.0), auth.Decisions(60.0)
    digest = one.credential(value)
    assert digest == one.credential(value)
    assert digest != other.credential(value)  # a random key per process
    assert len(digest) == 16 and value not in digest and b"S3cret" not in digest
    assert one.credential(None) == b""
    one.put(digest, "p", "r", auth.ALLOWED)
    assert all(value not in repr(key).encode() for key in one._entries)


def test_digest_names_are_remembered_by_hash_only_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memo of hash(value) → digest holds no value, stays bounded, and gives each value
    its own digest."""
    decisions = auth.Decisions(60.0)
    values = [b"Basic " + base64.b64encode(f"user{i}:pw{i}".encode()) for i in range(50)]
    digests = [decisions.credential(v) for v in values]
    assert len(set(digests)) == 50
    assert [decisions.credential(v) for v in values] == digests  # from the memo, the same
    assert all(isinstance(k, int) for k in decisions._names)
    assert all(len(d) == 16 for d in decisions._names.values())
    monkeypatch.setattr(auth, "MAX_NAMES", 10)
    bounded = auth.Decisions(60.0)
    for value in values:
        bounded.credential(value)
        assert len(bounded._names) <= 10
    assert bounded.credential(values[0]) == auth.Decisions.credential(bounded, values[0])
    decisions.put(digests[3], "p", "r", auth.ALLOWED)
    assert decisions.allowed(values[3], "p", "r")
    assert not decisions.allowed(values[4], "p", "r")


@pytest.mark.parametrize(
    ("value", "anonymous"),
    [(None, True), (b"Basic Og==", True), (b"Basic YTpi", False), (b"Bearer x", False)],
)
def test_client_credentials(value: bytes | None, anonymous: bool) -> None:
    assert (auth.client_credentials(value) is None) is anonymous


@pytest.mark.parametrize(
    "value",
    [b"Bearer abc", b"Basic", b"Basic !!!", b"Basic " + base64.b64encode(b"no-colon"), b"Digest x"],
)
def test_only_basic_is_accepted(value: bytes) -> None:
    with pytest.raises(errors.Unauthorized) as info:
        auth._check_basic(value)
    assert info.value.headers == auth.BASIC_CHALLENGE


def test_token_claims_and_grants() -> None:
    claims = {
        "sub": "alice",
        "access": [
            {"type": "repository", "name": "ghcr/acme/tool", "actions": ["pull", "push"]},
            {"type": "repository", "name": "quay/acme/tool", "actions": []},
        ],
    }
    for key in ("token", "access_token"):
        assert auth.token_claims(_answer(claims, key)) == claims
    got = auth.token_claims(_answer(claims))
    assert auth.grants_pull(got, "ghcr/acme/tool")
    assert not auth.grants_pull(got, "quay/acme/tool")
    assert not auth.grants_pull(got, "ghcr/acme/tool2")
    assert not auth.grants_pull(got, "ghcr/acme")
    assert not auth.grants_pull({"access": "pull"}, "ghcr/acme/tool")
    assert not auth.grants_pull(
        {"access": [{"type": "registry", "name": "ghcr/acme/tool", "actions": ["pull"]}]},
        "ghcr/acme/tool",
    )


@pytest.mark.parametrize(
    "body", [b"", b"{}", b"[]", b'{"token": "abc"}', b'{"token": "a.!!.c"}', b'{"token": 1}']
)
def test_unreadable_token_answers(body: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        auth.token_claims(body)
