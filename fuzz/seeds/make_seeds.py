#!/usr/bin/env python3
"""Writes the seed corpora fuzz/seeds/token and fuzz/seeds/jwks (deterministic; re-run to regenerate).

token inputs: first byte even = a raw token (signatures here are random: the fuzz keys are made per
process); odd = header JSON, 0xFF, payload JSON, which the target signs with its own key
(mode 0x01 RS256, 0x03 ES256, 0x09 EdDSA). jwks inputs: JWKS, discovery documents, PEM and DER.
"""
import base64
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER = "https://issuer.test"
SERVICE = "gitlab-duo-workflow-service"
NOW = 1_750_000_000  # the fuzz target's clock
rng = random.Random(7638)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def js(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def write(corpus: str, name: str, data: bytes) -> None:
    os.makedirs(os.path.join(HERE, corpus), exist_ok=True)
    with open(os.path.join(HERE, corpus, name), "wb") as f:
        f.write(data)


claims = {
    "iss": ISSUER, "aud": SERVICE, "sub": "user-1", "jti": "1",
    "iat": NOW - 30, "nbf": NOW - 30, "exp": NOW + 3600,
    "scopes": ["duo_workflow_execute_workflow"], "gitlab_realm": "saas",
    "gitlab_instance_id": "inst-1", "duo_seat_count": "3",
}

# Signed mode: the target signs these, so they reach into_claims and the claim checks.
for mode, alg in [(0x01, "RS256"), (0x03, "ES256"), (0x09, "EdDSA")]:
    write("token", f"signed-{alg}", bytes([mode]) + js({"alg": alg, "typ": "JWT"}) + b"\xff" + js(claims))
write("token", "signed-aud-array", b"\x09" + js({"alg": "EdDSA"}) + b"\xff"
      + js(dict(claims, aud=["other", SERVICE], exp=NOW + 60.5)))
write("token", "signed-expired", b"\x03" + js({"alg": "ES256"}) + b"\xff" + js(dict(claims, exp=NOW - 61)))
write("token", "signed-duplicate", b"\x03" + b'{"alg":"ES256","alg":"none"}' + b"\xff" + js(claims))

# Raw mode: tokens as a client sends them.
for alg, kid, size in [("RS256", "k1", 256), ("ES256", None, 64), ("EdDSA", "k3", 64)]:
    header = {"alg": alg, "typ": "JWT"} | ({"kid": kid} if kid else {})
    token = f"{b64(js(header))}.{b64(js(claims))}.{b64(rng.randbytes(size))}"
    write("token", f"raw-{alg}", b"\x00" + token.encode())
write("token", "raw-jwe", b"\x00" + ".".join(b64(rng.randbytes(12)) for _ in range(5)).encode())
write("token", "raw-none", b"\x00" + f"{b64(js({'alg': 'none'}))}.{b64(js(claims))}.".encode())


# jwks corpus
def der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def rsa_pkcs1(n: bytes, e: bytes) -> bytes:
    return der(0x30, der(0x02, b"\x00" + n) + der(0x02, e))


def spki(oids: bytes, key: bytes) -> bytes:
    return der(0x30, der(0x30, oids) + der(0x03, b"\x00" + key))


def pem(label: str, data: bytes) -> bytes:
    body = base64.b64encode(data).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)).encode()


n = bytes([0xc0 | rng.randrange(64)]) + rng.randbytes(254) + bytes([rng.randrange(128) * 2 + 1])
e = b"\x01\x00\x01"
point = b"\x04" + rng.randbytes(64)
ed = rng.randbytes(32)
OID_RSA = der(0x06, bytes.fromhex("2a864886f70d010101")) + der(0x05, b"")
OID_EC = der(0x06, bytes.fromhex("2a8648ce3d0201")) + der(0x06, bytes.fromhex("2a8648ce3d030107"))
OID_ED = der(0x06, bytes.fromhex("2b6570"))

jwks = {"keys": [
    {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": b64(n), "e": b64(e)},
    {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])},
    {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64(ed), "alg": "EdDSA"},
    {"kty": "oct", "k": b64(rng.randbytes(32))},
    {"kty": "RSA", "n": b64(n), "e": b64(e), "d": b64(rng.randbytes(16))},
    {"kty": "EC", "crv": "P-384", "x": b64(rng.randbytes(48)), "y": b64(rng.randbytes(48))},
]}
write("jwks", "jwks", js(jwks))
write("jwks", "jwk-okp", js(jwks["keys"][2]))
write("jwks", "discovery", js({"issuer": ISSUER, "jwks_uri": ISSUER + "/oauth/discovery/keys"}))
write("jwks", "discovery-other", js({"issuer": "https://other.test/", "jwks_uri": "http://127.0.0.1:1/k"}))
write("jwks", "pem-all", pem("PUBLIC KEY", spki(OID_RSA, rsa_pkcs1(n, e))) + pem("PUBLIC KEY", spki(OID_EC, point))
      + pem("PUBLIC KEY", spki(OID_ED, ed)) + pem("RSA PUBLIC KEY", rsa_pkcs1(n, e)))
write("jwks", "der-spki-p256", spki(OID_EC, point))
write("jwks", "der-spki-rsa", spki(OID_RSA, rsa_pkcs1(n, e)))
