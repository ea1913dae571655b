"""Hostile-input battery (SECURITY-CHECKLIST.md, "Tokens" and "Service" rows) for the interop suite.

`interop_test.py` calls `run(suite, helpers, binary, log_dir)` after its own scenarios; the checks
land in the same `N passed, N failed` line. Everything here runs against its own service process,
configured only through environment variables:

* "GitLab": a Python OIDC provider on loopback publishing an RSA key (RS256, the only algorithm a
  GitLab source allows), and also a P-256 and a P-384 key, which must never verify anything there;
* "CustomersDot": a second provider with its own RSA key (for "a kid of the other issuer");
* the local authority signing with a P-256 key (ES256, issuer = the service name), the one
  place an ECDSA signature is legitimately verified: ECDSA DER form, r = 0, s = 0 are attacked there;
* an "attacker" HTTP server that `jku`/`x5u` point at: it must never be asked for anything.

Tokens are built by hand (raw base64url, `cryptography`, `hmac`): every hostile token is validly
signed by a trusted key unless the case is about the signature, so its one hostile property is
the only reason to refuse it. Each check sends one hostile request, asserts the status and
`details`, and then asserts that the process is alive and a good token is still accepted.
"""

import base64
import datetime
import hashlib
import hmac
import json
import time
import urllib.parse
import uuid
import zlib
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

HOSTILE_BUDGET = 60.0  # seconds granted to the battery on top of the suite's own budget
FLOOD = 200  # tokens with random kids
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
OMIT = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact_json(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def segment(part) -> str:
    """bytes are raw JSON text (or anything else) to encode as is; anything else is JSON-encoded."""
    return b64url(bytes(part) if isinstance(part, (bytes, bytearray)) else compact_json(part))


def members(d: dict) -> str:
    """`"k":v,...` of a dict, to splice raw members (duplicates, odd numbers) into an object."""
    return ",".join(json.dumps(k) + ":" + json.dumps(v) for k, v in d.items())


def drop_omitted(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not OMIT}


# ---- signers: signing_input bytes -> signature bytes --------------------------------------------


def rs_signer(private, hash_alg=None):
    return lambda data: private.sign(data, padding.PKCS1v15(), hash_alg or hashes.SHA256())


def ps_signer(private, hash_alg=None):
    h = hash_alg or hashes.SHA256()
    return lambda data: private.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)


def hs_signer(secret: bytes, digest=hashlib.sha256):
    return lambda data: hmac.new(secret, data, digest).digest()


def no_signature(_data):
    return b""


class EcKey:
    """An EC key pair (P-256 or P-384) with a kid."""

    CURVES = {"secp256r1": ("P-256", "ES256", hashes.SHA256), "secp384r1": ("P-384", "ES384", hashes.SHA384)}

    def __init__(self, kid: str, curve=None):
        self.kid = kid
        self.private = ec.generate_private_key(curve or ec.SECP256R1())
        self.public = self.private.public_key()
        self.crv, self.alg, self.hash = EcKey.CURVES[self.private.curve.name]
        self.size = (self.private.curve.key_size + 7) // 8

    def jwk(self) -> dict:
        n = self.public.public_numbers()
        return {
            "kty": "EC",
            "crv": self.crv,
            "kid": self.kid,
            "x": b64url(n.x.to_bytes(self.size, "big")),
            "y": b64url(n.y.to_bytes(self.size, "big")),
            "use": "sig",
            "alg": self.alg,
        }

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def pem_pkcs8(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def der_signer(self, hash_cls=None):
        return lambda data: self.private.sign(data, ec.ECDSA((hash_cls or self.hash)()))

    def rs_pair(self, data: bytes, hash_cls=None):
        return decode_dss_signature(self.private.sign(data, ec.ECDSA((hash_cls or self.hash)())))

    def raw_signer(self, hash_cls=None, size=None, mangle=None):
        """JOSE r||s; `mangle(r, s) -> (r, s)` to attack the numbers."""
        size = size or self.size

        def sign(data):
            r, s = self.rs_pair(data, hash_cls)
            if mangle:
                r, s = mangle(r, s)
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        return sign


def self_signed_cert_der(private, cn: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


# ---- a raw HTTP/2 gRPC client, for header values grpcio refuses to send -------------------------


class RawOutcome:
    """What a raw HTTP/2 call ended with: grpc-status/-message, or a reset / GOAWAY / nothing."""

    def __init__(self):
        self.http_status = None
        self.grpc_status = None
        self.grpc_message = None
        self.data = False
        self.reset = None
        self.goaway = None
        self.closed = False

    @property
    def ok(self):
        return self.grpc_status == "0"

    def __repr__(self):
        if self.grpc_status is not None:
            return f"grpc-status {self.grpc_status} {self.grpc_message!r}"
        return f"no gRPC status (http {self.http_status}, RST_STREAM {self.reset}, GOAWAY {self.goaway}, closed {self.closed})"


def raw_grpc_call(h, port: int, metadata, path="/DuoWorkflow/GenerateToken", timeout=3.0) -> RawOutcome:
    """One unary call on a fresh HTTP/2 connection; `metadata` is [(bytes, bytes)] sent verbatim
    (HPACK literals, no Huffman), so values may hold a tab, obs-text or anything else."""
    from hpack import Decoder, Encoder

    pseudo = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
              (b":authority", f"127.0.0.1:{port}".encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    block = Encoder().encode(pseudo + list(metadata), huffman=False)
    out = RawOutcome()
    decoder = Decoder()
    pending = b""  # a header block awaiting its CONTINUATION frames
    ended = False
    for kind, flags, payload in h.h2_call_frames(port, block, b"\0\0\0\0\0", timeout):
        if kind == "GOAWAY":
            out.goaway = int.from_bytes(payload[4:8], "big")
            return out
        if kind == "CLOSED":
            out.closed = True
            return out
        if kind == 0x3:
            out.reset = int.from_bytes(payload[:4], "big")
            return out
        if kind == 0x0:
            out.data = out.data or len(payload) > 0
            if flags & 0x1:
                return out
        elif kind in (0x1, 0x9):
            if kind == 0x1:
                ended = flags & 0x1
            pending += payload
            if flags & 0x4:
                for name, value in decoder.decode(pending):
                    if name == ":status":
                        out.http_status = value
                    elif name == "grpc-status":
                        out.grpc_status = value
                    elif name == "grpc-message":
                        out.grpc_message = urllib.parse.unquote(value)
                pending = b""
                if ended:
                    return out
    return out


# ---- the world ---------------------------------------------------------------------------------


class HostileWorld:
    """Keys, the providers, the attacker's server and the service process of the battery."""

    def __init__(self, h, binary: str, log_dir):
        self.h = h
        self.tokens = set()  # every token sent, to check none reaches the log
        self.servers = []
        self.process = None
        self.gl_rsa = h.Key("hostile-gitlab-rsa")
        self.gl_ec = EcKey("hostile-gitlab-p256")
        self.gl_p384 = EcKey("hostile-gitlab-p384", ec.SECP384R1())
        self.cdot = h.Key("hostile-customersdot-rsa")
        self.attacker = h.Key("hostile-attacker-rsa")
        self.attacker_ec = EcKey("hostile-attacker-p256")
        self.attacker_ed = ed25519.Ed25519PrivateKey.generate()
        self.authority = EcKey("unused")  # the service derives its kid
        try:
            self.gitlab = self.server("hostile-gitlab", [self.gl_rsa, self.gl_ec, self.gl_p384])
            self.customers_dot = self.server("hostile-customersdot", [self.cdot])
            self.evil = self.server("hostile-attacker", [self.attacker])
            self.process = h.ServiceProcess(
                "hostile",
                binary,
                {
                    "DUO_WORKFLOW_AUTH__ENABLED": "true",
                    "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": self.gitlab.base,
                    "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": self.customers_dot.base,
                    "DUO_WORKFLOW_SELF_SIGNED_JWT__SIGNING_KEY": self.authority.pem_pkcs8(),
                    "DUO_WORKFLOW_CLOUD_CONNECTOR_SERVICE_NAME": h.SERVICE_NAME,
                },
                log_dir,
            )
        except BaseException:
            self.stop()
            raise

    def server(self, name, keys):
        issuer = self.h.OidcIssuer(name, keys)
        self.servers.append(issuer)
        return issuer

    def stop(self):
        if self.process is not None:
            try:
                self.process.stop()
            except Exception as e:
                print(f"# could not stop {self.process.name}: {e}", flush=True)
        for server in self.servers:
            try:
                server.stop()
            except Exception as e:
                print(f"# could not stop {server.name}: {e}", flush=True)


class Battery:
    def __init__(self, s, h, w: HostileWorld):
        self.s, self.h, self.w = s, h, w
        self.p = w.process
        self.gl = w.gitlab.base
        self.cd = w.customers_dot.base
        self.K = w.gl_rsa
        self.rs256 = rs_signer(self.K.private)
        self.authority_kid = None
        self.count = 0

    # ---- tokens -------------------------------------------------------------------------------

    def claims(self, **over) -> dict:
        h = self.h
        now = int(time.time())
        c = {
            "iss": self.gl,
            "aud": h.SERVICE_NAME,
            "sub": h.INSTANCE_ID,
            "iat": now,
            "nbf": now - 5,
            "exp": now + 3600,
            "jti": str(uuid.uuid4()),
            "gitlab_realm": h.REALM,
            "gitlab_instance_id": h.INSTANCE_ID,
            "scopes": [h.EXECUTE, h.GENERATE],
        }
        c.update(over)
        return drop_omitted(c)

    def user_claims(self, **over) -> dict:
        """A user token's claims, as the local authority mints them."""
        h = self.h
        return self.claims(iss=h.SERVICE_NAME, aud=h.SERVICE_NAME, sub=h.USER_ID, nbf=int(time.time()),
                           scopes=[h.EXECUTE], **over)

    def header(self, **over) -> dict:
        return drop_omitted({"alg": "RS256", "typ": "JWT", "kid": self.K.kid, **over})

    def raw_claims(self, *raw, **over) -> bytes:
        """The claims object as JSON text with raw members spliced in first (keys named in
        `over` with OMIT are left out of the rest)."""
        rest = members(self.claims(**over))
        return ("{" + ",".join(list(raw) + ([rest] if rest else [])) + "}").encode()

    def token(self, header=None, payload=None, sign=None) -> str:
        head = segment(self.header() if header is None else header)
        body = segment(self.claims() if payload is None else payload)
        signing_input = f"{head}.{body}"
        sig = (sign or self.rs256)(signing_input.encode())
        t = f"{signing_input}.{b64url(sig)}"
        self.w.tokens.add(t)
        return t

    def good(self) -> str:
        return self.token()

    def sized_token(self, length: int) -> str:
        """A validly signed RS256 token of exactly `length` characters (a `pad` claim fills it)."""
        sig_len = len(b64url(b"\0" * 256))
        base = self.claims()
        for spaces in range(4):
            head = ('{"alg":"RS256",' + " " * spaces + '"typ":"JWT","kid":' + json.dumps(self.K.kid) + "}").encode()
            want = length - len(b64url(head)) - 2 - sig_len
            if want % 4 == 1 or want <= 0:
                continue
            size = (3 * want) // 4
            empty = len(compact_json({**base, "pad": ""}))
            if size < empty:
                continue
            body = compact_json({**base, "pad": "x" * (size - empty)})
            t = self.token(head, body)
            if len(t) == length:
                return t
        raise RuntimeError(f"could not build a token of {length} characters")

    # ---- checks -------------------------------------------------------------------------------

    def still_good(self, channel_retry=False):
        h = self.h
        expect = h.expect
        expect(self.p.alive(), f"the service exited with {self.p.proc.returncode}")
        deadline = time.monotonic() + (3.0 if channel_retry else 0.0)
        while True:
            out = h.generate_token(self.p.stub, h.metadata(self.good()))
            if out.ok:
                return
            if out.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise h.Failure(f"after the hostile request a good token got {out!r}")
            time.sleep(0.1)

    def case(self, name, attack, channel_retry=False):
        def body():
            attack()
            self.still_good(channel_retry)

        self.count += 1
        self.s.check(f"hostile.{name}", body)

    def refused(self, name, make, details=None, md=None):
        """`make()` builds the token (at check time: fresh times, construction errors reported)."""
        h = self.h

        def attack():
            token = make()
            metadata = md(token) if md else h.metadata(token)
            h.expect_status(h.generate_token(self.p.stub, metadata), h.UNAUTHENTICATED, details or h.FORBIDDEN)

        self.case(name, attack)

    def any_error(self, name, metadata_fn):
        h = self.h

        def attack():
            out = h.generate_token(self.p.stub, metadata_fn())
            h.expect(not out.ok, "an oversized request was accepted")
            print(f"# {name}: {out!r}", flush=True)

        self.case(name, attack, channel_retry=True)

    # ---- groups ---------------------------------------------------------------------------------

    def setup(self) -> bool:
        h, s = self.h, self.s
        if not s.check("hostile.setup.process_answers_health", self.p.wait_ready):
            return False

        def keys():
            out = h.wait_for_keys(self.p, h.metadata(self.good()))
            h.expect(out.ok, f"a good token was never accepted: {out!r}")

        if not s.check("hostile.setup.good_rs256_token_accepted", keys):
            return False

        s.check("hostile.setup.good_kidless_token_accepted",
                lambda: h.expect_ok(h.generate_token(self.p.stub, h.metadata(self.token(self.header(kid=OMIT))))))
        s.check("hostile.setup.customersdot_token_accepted", lambda: h.expect_ok(h.generate_token(
            self.p.stub, h.metadata(self.token(self.header(kid=self.w.cdot.kid), self.claims(iss=self.cd),
                                               rs_signer(self.w.cdot.private))))))

        def authority_kid():
            status, _, body = h.http_get(f"http://127.0.0.1:{self.p.http_port}{h.OidcIssuer.JWKS}")
            h.expect_equal("status", status, 200)
            x = self.w.authority.jwk()["x"]
            mine = [k for k in json.loads(body).get("keys", []) if k.get("x") == x]
            h.expect(len(mine) == 1 and isinstance(mine[0].get("kid"), str), f"authority key not published: {body[:300]!r}")
            h.expect_equal("authority key alg", mine[0].get("alg"), "ES256")
            self.authority_kid = mine[0]["kid"]

        s.check("hostile.setup.authority_p256_key_published", authority_kid)

        def authority_control():
            # Authenticates (a user token of this service), then is refused by authorization.
            for header in ({"alg": "ES256", "typ": "JWT"}, {"alg": "ES256", "typ": "JWT", "kid": self.authority_kid}):
                t = self.token(drop_omitted(header), self.user_claims(), self.w.authority.raw_signer())
                h.expect_status(h.generate_token(self.p.stub, h.metadata(t)), h.PERMISSION_DENIED,
                                "Unauthorized to generate token")

        s.check("hostile.setup.authority_es256_user_token_authenticates", authority_control)
        return True

    def alg(self):
        w, K, hd = self.w, self.K, self.header
        R = self.refused
        R("alg.missing", lambda: self.token(hd(alg=OMIT)))
        R("alg.missing.kidless", lambda: self.token(hd(alg=OMIT, kid=OMIT)))
        R("alg.number", lambda: self.token(hd(alg=256)))
        R("alg.null", lambda: self.token(hd(alg=None)))
        R("alg.array", lambda: self.token(hd(alg=["RS256"])))
        R("alg.object", lambda: self.token(hd(alg={"RS256": True})))
        R("alg.empty_string", lambda: self.token(hd(alg="")))
        R("alg.lowercase_rs256", lambda: self.token(hd(alg="rs256")))
        R("alg.rs256_trailing_space", lambda: self.token(hd(alg="RS256 ")))
        for none in ("none", "None", "NONE", "nOnE"):
            R(f"alg.{none}.no_signature", lambda none=none: self.token(hd(alg=none), sign=no_signature))
            R(f"alg.{none}.no_signature.kidless", lambda none=none: self.token(hd(alg=none, kid=OMIT), sign=no_signature))
            R(f"alg.{none}.with_valid_rs256_signature", lambda none=none: self.token(hd(alg=none)))
            R(f"alg.{none}.with_garbage_signature", lambda none=none: self.token(hd(alg=none), sign=lambda d: b"sig"))

        spki = K.public_pem()
        pkcs1 = K.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        jwk_published = json.dumps(K.jwk()).encode()  # byte for byte as the provider serves it
        jwks_published = json.dumps({"keys": [k.jwk() for k in self.w.gitlab.keys]}).encode()
        n = K.public.public_numbers().n
        secrets = {
            "spki_pem": spki,
            "spki_pem_no_newline": spki.rstrip(b"\n"),
            "pkcs1_pem": pkcs1,
            "spki_der": K.public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            "jwk_json": jwk_published,
            "jwk_json_compact": compact_json(K.jwk()),
            "jwks_document": jwks_published,
            "modulus_bytes": n.to_bytes(256, "big"),
            "modulus_b64url": K.jwk()["n"].encode(),
        }
        for label, secret in secrets.items():
            R(f"alg.hs256_keyed_with_rsa_public_{label}", lambda secret=secret: self.token(hd(alg="HS256"), sign=hs_signer(secret)))
        R("alg.hs256_keyed_with_rsa_public_spki_pem.kidless", lambda: self.token(hd(alg="HS256", kid=OMIT), sign=hs_signer(spki)))
        R("alg.hs384_keyed_with_rsa_public_spki_pem", lambda: self.token(hd(alg="HS384"), sign=hs_signer(spki, hashlib.sha384)))
        R("alg.hs512_keyed_with_rsa_public_spki_pem", lambda: self.token(hd(alg="HS512"), sign=hs_signer(spki, hashlib.sha512)))
        R("alg.hs256_keyed_with_ec_public_pem", lambda: self.token(hd(alg="HS256", kid=w.gl_ec.kid), sign=hs_signer(w.gl_ec.public_pem())))
        R("alg.hs256_empty_secret", lambda: self.token(hd(alg="HS256", kid=OMIT), sign=hs_signer(b"")))
        R("alg.rs384_trusted_key", lambda: self.token(hd(alg="RS384"), sign=rs_signer(K.private, hashes.SHA384())))
        R("alg.rs512_trusted_key", lambda: self.token(hd(alg="RS512"), sign=rs_signer(K.private, hashes.SHA512())))
        R("alg.ps256_trusted_key", lambda: self.token(hd(alg="PS256"), sign=ps_signer(K.private)))
        R("alg.ps256_trusted_key.kidless", lambda: self.token(hd(alg="PS256", kid=OMIT), sign=ps_signer(K.private)))
        R("alg.rs256_header_pss_signature", lambda: self.token(hd(), sign=ps_signer(K.private)))
        R("alg.es256_unpublished_ec_key", lambda: self.token(hd(alg="ES256", kid=w.attacker_ec.kid), sign=w.attacker_ec.raw_signer()))
        R("alg.es256_unpublished_ec_key.kidless", lambda: self.token(hd(alg="ES256", kid=OMIT), sign=w.attacker_ec.raw_signer()))
        R("alg.es256_unpublished_ec_key.naming_published_ec_kid",
          lambda: self.token(hd(alg="ES256", kid=w.gl_ec.kid), sign=w.attacker_ec.raw_signer()))
        R("alg.es256_published_ec_key_rs256_only_source", lambda: self.token(hd(alg="ES256", kid=w.gl_ec.kid), sign=w.gl_ec.raw_signer()))
        R("alg.es256_published_ec_key_rs256_only_source.kidless",
          lambda: self.token(hd(alg="ES256", kid=OMIT), sign=w.gl_ec.raw_signer()))
        R("alg.es256_published_ec_key_der_signature", lambda: self.token(hd(alg="ES256", kid=w.gl_ec.kid), sign=w.gl_ec.der_signer()))
        R("alg.rs256_naming_ec_kid", lambda: self.token(hd(kid=w.gl_ec.kid)))
        R("alg.rs256_naming_p384_kid", lambda: self.token(hd(kid=w.gl_p384.kid)))
        R("alg.es384_published_p384_key", lambda: self.token(hd(alg="ES384", kid=w.gl_p384.kid), sign=w.gl_p384.raw_signer()))
        R("alg.es256_against_p384_key",
          lambda: self.token(hd(alg="ES256", kid=w.gl_p384.kid), sign=w.gl_p384.raw_signer(hashes.SHA256)))
        R("alg.es256_against_p384_key.kidless",
          lambda: self.token(hd(alg="ES256", kid=OMIT), sign=w.gl_p384.raw_signer(hashes.SHA256)))
        ed_jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(w.attacker_ed.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))}
        R("alg.eddsa_attacker_key_in_jwk", lambda: self.token(hd(alg="EdDSA", kid=OMIT, jwk=ed_jwk), sign=w.attacker_ed.sign))

    def header_key_material(self):
        w, K, hd, R = self.w, self.K, self.header, self.refused
        A = w.attacker
        attacker_rs = rs_signer(A.private)
        jku = w.evil.base + w.evil.JWKS
        x5u = w.evil.base + "/x5u.pem"
        attacker_cert = base64.b64encode(self_signed_cert_der(A.private, "gitlab.example.com")).decode()
        trusted_cert = base64.b64encode(self_signed_cert_der(K.private, "gitlab.com")).decode()
        # Attacker-signed, with the key (or where to get it) in the header.
        R("header.jwk_attacker_key.kidless", lambda: self.token(hd(kid=OMIT, jwk=A.jwk()), sign=attacker_rs))
        R("header.jwk_attacker_key.attacker_kid", lambda: self.token(hd(kid=A.kid, jwk=A.jwk()), sign=attacker_rs))
        R("header.jwk_attacker_key.trusted_kid", lambda: self.token(hd(jwk={**A.jwk(), "kid": K.kid}), sign=attacker_rs))
        R("header.jwk_attacker_ec_key", lambda: self.token(hd(alg="ES256", kid=OMIT, jwk=w.attacker_ec.jwk()),
                                                           sign=w.attacker_ec.raw_signer()))
        R("header.jku_attacker.attacker_kid", lambda: self.token(hd(kid=A.kid, jku=jku), sign=attacker_rs))
        R("header.jku_attacker.kidless", lambda: self.token(hd(kid=OMIT, jku=jku), sign=attacker_rs))
        R("header.x5u_attacker.kidless", lambda: self.token(hd(kid=OMIT, x5u=x5u), sign=attacker_rs))
        R("header.x5c_attacker_cert.kidless", lambda: self.token(hd(kid=OMIT, x5c=[attacker_cert]), sign=attacker_rs))
        R("header.x5c_attacker_cert.trusted_kid", lambda: self.token(hd(x5c=[attacker_cert]), sign=attacker_rs))
        # The same parameters beside a genuinely trusted signature.
        R("header.trusted_signature.jwk_attacker", lambda: self.token(hd(jwk=A.jwk())))
        R("header.trusted_signature.jwk_own_key", lambda: self.token(hd(jwk=K.jwk())))
        R("header.trusted_signature.jwk_own_key.kidless", lambda: self.token(hd(kid=OMIT, jwk=K.jwk())))
        R("header.trusted_signature.jku", lambda: self.token(hd(jku=jku)))
        R("header.trusted_signature.jku_own_provider", lambda: self.token(hd(jku=w.gitlab.base + w.gitlab.JWKS)))
        R("header.trusted_signature.x5u", lambda: self.token(hd(x5u=x5u)))
        R("header.trusted_signature.x5c_attacker_cert", lambda: self.token(hd(x5c=[attacker_cert])))
        R("header.trusted_signature.x5c_own_key_cert", lambda: self.token(hd(x5c=[trusted_cert])))
        R("header.trusted_signature.crit_exp", lambda: self.token(hd(crit=["exp"])))
        R("header.trusted_signature.crit_unknown_extension", lambda: self.token(hd(crit=["http://example.com/ext"], **{"http://example.com/ext": True})))
        R("header.trusted_signature.crit_empty_array", lambda: self.token(hd(crit=[])))
        R("header.trusted_signature.crit_string", lambda: self.token(hd(crit="exp")))
        R("header.trusted_signature.zip_def_plain_payload", lambda: self.token(hd(zip="DEF")))

        def deflated():
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            body = c.compress(compact_json(self.claims())) + c.flush()
            return self.token(hd(zip="DEF"), body)

        R("header.trusted_signature.zip_def_deflated_payload", deflated)
        R("header.trusted_signature.b64_false", lambda: self.token(hd(b64=False)))
        R("header.trusted_signature.b64_false_crit", lambda: self.token(hd(b64=False, crit=["b64"])))

        def unencoded():
            # RFC 7797: the signature covers the raw payload; detached-style, payload still encoded.
            head = segment(hd(b64=False, crit=["b64"]))
            raw = compact_json(self.claims())
            sig = self.rs256(head.encode() + b"." + raw)
            t = f"{head}.{segment(raw)}.{b64url(sig)}"
            self.w.tokens.add(t)
            return t

        R("header.trusted_signature.b64_false_signature_over_raw_payload", unencoded)

    def kid(self):
        w, K, hd, R = self.w, self.K, self.header, self.refused
        R("kid.number", lambda: self.token(hd(kid=1)))
        R("kid.zero", lambda: self.token(hd(kid=0)))
        R("kid.object", lambda: self.token(hd(kid={"kid": K.kid})))
        R("kid.array", lambda: self.token(hd(kid=[K.kid])))
        R("kid.boolean", lambda: self.token(hd(kid=True)))
        R("kid.null", lambda: self.token(hd(kid=None)))
        R("kid.empty", lambda: self.token(hd(kid="")))
        R("kid.257_bytes", lambda: self.token(hd(kid="k" * 257)))
        R("kid.257_bytes_prefix_of_trusted_kid", lambda: self.token(hd(kid=(K.kid + "-" * 257)[:257])))
        R("kid.4000_bytes", lambda: self.token(hd(kid="k" * 4000)))
        R("kid.trusted_kid_nul_suffix", lambda: self.token(hd(kid=K.kid + "\u0000")))
        R("kid.trusted_kid_trailing_space", lambda: self.token(hd(kid=K.kid + " ")))
        R("kid.trusted_kid_uppercase", lambda: self.token(hd(kid=K.kid.upper())))
        R("kid.path_traversal", lambda: self.token(hd(kid="../../../../etc/passwd")))
        cdot_rs = rs_signer(w.cdot.private)
        R("kid.customersdot_key_claiming_gitlab", lambda: self.token(hd(kid=w.cdot.kid), sign=cdot_rs))
        R("kid.customersdot_key_claiming_gitlab.kidless", lambda: self.token(hd(kid=OMIT), sign=cdot_rs))
        R("kid.gitlab_key_claiming_customersdot", lambda: self.token(hd(), self.claims(iss=self.cd)))
        R("kid.gitlab_key_claiming_customersdot.kidless", lambda: self.token(hd(kid=OMIT), self.claims(iss=self.cd)))
        R("kid.trusted_kid_signed_by_customersdot_key", lambda: self.token(hd(), sign=cdot_rs))
        R("kid.customersdot_kid_signed_by_gitlab_key", lambda: self.token(hd(kid=w.cdot.kid)))
        R("kid.gitlab_key_claiming_service_issuer",
          lambda: self.token(hd(), self.user_claims()))
        R("kid.gitlab_key_claiming_service_issuer.kidless",
          lambda: self.token(hd(kid=OMIT), self.user_claims()))
        R("kid.authority_key_claiming_gitlab",
          lambda: self.token({"alg": "ES256", "typ": "JWT", "kid": self.authority_kid or "x"}, sign=w.authority.raw_signer()))
        R("kid.authority_key_claiming_gitlab.kidless",
          lambda: self.token({"alg": "ES256", "typ": "JWT"}, sign=w.authority.raw_signer()))
        R("kid.authority_kid_claiming_gitlab_signed_by_gitlab_key", lambda: self.token(hd(kid=self.authority_kid or "x")))

    def structure(self):
        h, R = self.h, self.refused

        def parts():
            return self.good().split(".")

        def join(*segs):
            t = ".".join(segs)
            self.w.tokens.add(t)
            return t

        R("structure.two_segments", lambda: join(*parts()[:2]))
        R("structure.one_segment", lambda: parts()[1])
        R("structure.four_segments", lambda: join(*parts(), parts()[2]))
        R("structure.four_segments_trailing_dot", lambda: join(*parts(), ""))
        R("structure.five_segments_valid_token_and_two_more", lambda: join(*parts(), "AAAA", "AAAA"))
        R("structure.five_segments_jwe", lambda: join(
            segment({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": self.K.kid}), "AAAA", "AAAA", "AAAA", "AAAA"))
        R("structure.five_segments_jwe_dir", lambda: join(segment({"alg": "dir", "enc": "A128GCM"}), "", "AAAA", "AAAA", "AAAA"))
        R("structure.empty_header_segment", lambda: join("", *parts()[1:]))
        R("structure.empty_payload_segment", lambda: join(parts()[0], "", parts()[2]))
        R("structure.empty_signature_segment", lambda: join(*parts()[:2], ""))
        R("structure.only_two_dots", lambda: "..")
        R("structure.only_three_dots", lambda: "...")
        R("structure.5000_dots", lambda: "." * 5000)
        R("structure.valid_token_then_5000_dots", lambda: self.good() + "." * 5000)
        R("structure.1999_dots_between_json_segments", lambda: ".".join(["e30"] * 2000))  # e30 is {}

        def padded(which):
            def make():
                ps = parts()
                for i in which:  # proper padding where the length needs it, else a lone "="
                    ps[i] += "=" * (-len(ps[i]) % 4) or "="
                return join(*ps)

            return make

        R("structure.padding_on_signature", padded([2]))
        R("structure.padding_on_every_segment", padded([0, 1, 2]))
        R("structure.padding_on_header", padded([0]))
        R("structure.single_equals_appended", lambda: self.good() + "=")

        def standard_alphabet():
            for _ in range(100):
                t = self.good()
                if "-" in t or "_" in t:
                    return join(t.replace("-", "+").replace("_", "/"))
            raise RuntimeError("no token with - or _ in 100 tries")

        R("structure.standard_alphabet_plus_slash", standard_alphabet)
        R("structure.percent_encoded_dot", lambda: "%2E".join(parts()))
        R("structure.asterisk_inside", lambda: self.good()[:40] + "*" + self.good()[41:])
        R("structure.bang_inside", lambda: join(parts()[0] + "!", *parts()[1:]))
        R("structure.comma_separated_two_tokens", lambda: self.good() + "," + self.good())
        R("structure.space_inside_token", lambda: "A B".join(parts()[:1] + [".".join(parts()[1:])]),
          details=h.INVALID_AUTHORIZATION)

        # A tab inside the token: grpcio refuses to send it; see raw_http2.tab_inside_token.
        R("structure.exactly_8193_bytes", lambda: self.sized_token(8 * 1024 + 1))
        self.s.check("hostile.structure.control_exactly_8192_bytes_accepted",
                     lambda: h.expect_ok(h.generate_token(self.p.stub, h.metadata(self.sized_token(8 * 1024)))))
        R("structure.15000_bytes", lambda: self.sized_token(15000))
        self.any_error("structure.1_MiB_token", lambda: h.metadata(self.sized_token(1 << 20)))

    def json_documents(self):
        R, hd = self.refused, self.header
        K = self.K
        for label, value in (("array", b'["RS256"]'), ("string", b'"RS256"'), ("number", b"256"), ("null", b"null"),
                             ("true", b"true"), ("empty_object", b"{}")):
            R(f"json.header_{label}", lambda value=value: self.token(value))
        for label, value in (("array", b"[]"), ("array_of_claims", None), ("string", b'"claims"'), ("number", b"1"),
                             ("null", b"null"), ("empty_object", b"{}")):
            R(f"json.payload_{label}", lambda value=value: self.token(payload=value if value is not None else
                                                                     compact_json([self.claims()])))
        R("json.header_trailing_garbage", lambda: self.token(compact_json(hd()) + b"x"))
        R("json.header_trailing_object", lambda: self.token(compact_json(hd()) + b"{}"))
        R("json.header_trailing_nul", lambda: self.token(compact_json(hd()) + b"\x00"))
        R("json.payload_trailing_garbage", lambda: self.token(payload=compact_json(self.claims()) + b"x"))
        R("json.payload_trailing_object", lambda: self.token(payload=compact_json(self.claims()) + b"{}"))
        R("json.payload_trailing_bracket", lambda: self.token(payload=compact_json(self.claims()) + b"]"))
        R("json.payload_two_objects", lambda: self.token(payload=compact_json(self.claims()) + compact_json(self.claims())))
        R("json.payload_utf8_bom", lambda: self.token(payload=b"\xef\xbb\xbf" + compact_json(self.claims())))
        R("json.payload_unterminated", lambda: self.token(payload=compact_json(self.claims())[:-1]))
        R("json.header_single_quotes", lambda: self.token(b"{'alg':'RS256','kid':'" + K.kid.encode() + b"'}"))

        gl, svc = self.gl, self.h.SERVICE_NAME
        dup = '"{}":{}'.format
        R("json.duplicate_iss.trusted_then_unknown",
          lambda: self.token(payload=self.raw_claims(dup("iss", json.dumps(gl)), dup("iss", '"https://evil.example.com"'), iss=OMIT)))
        R("json.duplicate_iss.unknown_then_trusted",
          lambda: self.token(payload=self.raw_claims(dup("iss", '"https://evil.example.com"'), dup("iss", json.dumps(gl)), iss=OMIT)))
        R("json.duplicate_iss.customersdot_then_gitlab",
          lambda: self.token(payload=self.raw_claims(dup("iss", json.dumps(self.cd)), dup("iss", json.dumps(gl)), iss=OMIT)))
        R("json.duplicate_iss.identical",
          lambda: self.token(payload=self.raw_claims(dup("iss", json.dumps(gl)), dup("iss", json.dumps(gl)), iss=OMIT)))
        R("json.duplicate_aud.trusted_then_wrong",
          lambda: self.token(payload=self.raw_claims(dup("aud", json.dumps(svc)), dup("aud", '"gitlab-ai-gateway"'), aud=OMIT)))
        R("json.duplicate_aud.wrong_then_trusted",
          lambda: self.token(payload=self.raw_claims(dup("aud", '"gitlab-ai-gateway"'), dup("aud", json.dumps(svc)), aud=OMIT)))
        R("json.duplicate_exp.expired_then_valid", lambda: self.token(payload=self.raw_claims(
            dup("exp", int(time.time()) - 7200), dup("exp", int(time.time()) + 3600), exp=OMIT)))
        R("json.duplicate_exp.valid_then_expired", lambda: self.token(payload=self.raw_claims(
            dup("exp", int(time.time()) + 3600), dup("exp", int(time.time()) - 7200), exp=OMIT)))
        R("json.duplicate_scopes", lambda: self.token(payload=self.raw_claims(
            dup("scopes", "[]"), dup("scopes", json.dumps([self.h.EXECUTE, self.h.GENERATE])), scopes=OMIT)))
        kid = json.dumps(K.kid)
        R("json.duplicate_alg.none_then_rs256",
          lambda: self.token(('{"alg":"none","alg":"RS256","typ":"JWT","kid":' + kid + "}").encode()))
        R("json.duplicate_alg.rs256_then_none",
          lambda: self.token(('{"alg":"RS256","alg":"none","typ":"JWT","kid":' + kid + "}").encode()))
        R("json.duplicate_alg.hs256_then_rs256",
          lambda: self.token(('{"alg":"HS256","alg":"RS256","typ":"JWT","kid":' + kid + "}").encode()))
        R("json.duplicate_alg.identical",
          lambda: self.token(('{"alg":"RS256","alg":"RS256","typ":"JWT","kid":' + kid + "}").encode()))
        R("json.duplicate_kid.unknown_then_trusted",
          lambda: self.token(('{"alg":"RS256","typ":"JWT","kid":"nope","kid":' + kid + "}").encode()))
        R("json.duplicate_kid.trusted_then_unknown",
          lambda: self.token(('{"alg":"RS256","typ":"JWT","kid":' + kid + ',"kid":"nope"}').encode()))
        R("json.duplicate_kid.customersdot_then_trusted",
          lambda: self.token(('{"alg":"RS256","typ":"JWT","kid":' + json.dumps(self.w.cdot.kid) + ',"kid":' + kid + "}").encode()))
        deep_array = "[" * 200 + "]" * 200
        deep_object = '{"a":' * 200 + "1" + "}" * 200
        R("json.payload_nested_arrays_200_deep", lambda: self.token(payload=self.raw_claims(dup("deep", deep_array))))
        R("json.payload_nested_objects_200_deep", lambda: self.token(payload=self.raw_claims(dup("deep", deep_object))))
        R("json.header_nested_arrays_200_deep",
          lambda: self.token(('{"alg":"RS256","typ":"JWT","kid":' + kid + ',"deep":' + deep_array + "}").encode()))
        R("json.payload_is_array_200_deep", lambda: self.token(payload=deep_array.encode()))
        R("json.exp_1e999", lambda: self.token(payload=self.raw_claims('"exp":1e999', exp=OMIT)))
        R("json.exp_minus_1e999", lambda: self.token(payload=self.raw_claims('"exp":-1e999', exp=OMIT)))
        R("json.unrelated_claim_1e999", lambda: self.token(payload=self.raw_claims('"big":1e999')))
        R("json.exp_400_digit_integer", lambda: self.token(payload=self.raw_claims('"exp":' + "9" * 400, exp=OMIT)))
        R("json.exp_NaN_literal", lambda: self.token(payload=self.raw_claims('"exp":NaN', exp=OMIT)))
        R("json.exp_Infinity_literal", lambda: self.token(payload=self.raw_claims('"exp":Infinity', exp=OMIT)))
        R("json.invalid_utf8_in_payload_string",
          lambda: self.token(payload=self.raw_claims('"note":"aXb"').replace(b'"aXb"', b'"a\xffb"')))
        R("json.invalid_utf8_in_sub",
          lambda: self.token(payload=self.raw_claims(sub=OMIT).replace(b"{", b'{"sub":"\xff\xfe",', 1)))
        R("json.invalid_utf8_in_header",
          lambda: self.token(('{"alg":"RS256","typ":"JW\xc3\x28","kid":' + kid + "}").encode("latin-1")))
        R("json.overlong_utf8_in_payload",
          lambda: self.token(payload=self.raw_claims(sub=OMIT).replace(b"{", b'{"sub":"\xc0\xaf",', 1)))
        R("json.lone_surrogate_escape_in_sub",
          lambda: self.token(payload=self.raw_claims('"sub":"\\ud800"', sub=OMIT)))
        R("json.unescaped_control_character_in_string",
          lambda: self.token(payload=self.raw_claims('"note":"a\x01b"')))

    def claim_types(self):
        R, c, h = self.refused, self.claims, self.h
        svc, gl = h.SERVICE_NAME, self.gl

        def now():
            return int(time.time())

        def raw(text, **omit):
            return lambda: self.token(payload=self.raw_claims(text, **omit))

        for name in ("exp", "nbf", "iat"):
            later = (lambda: now() + 3600) if name == "exp" else (lambda: now() - 5)
            R(f"claims.{name}_string", lambda name=name, later=later: self.token(payload=c(**{name: str(later())})))
            R(f"claims.{name}_negative", lambda name=name: self.token(payload=c(**{name: -1})))
            R(f"claims.{name}_1e300", raw(f'"{name}":1e300', **{name: OMIT}))
            R(f"claims.{name}_2^63-1", raw(f'"{name}":{2 ** 63 - 1}', **{name: OMIT}))
            R(f"claims.{name}_2^63", raw(f'"{name}":{2 ** 63}', **{name: OMIT}))
            R(f"claims.{name}_2^64", raw(f'"{name}":{2 ** 64}', **{name: OMIT}))
            R(f"claims.{name}_-2^63", raw(f'"{name}":{-(2 ** 63)}', **{name: OMIT}))
            R(f"claims.{name}_boolean", lambda name=name: self.token(payload=c(**{name: True})))
            R(f"claims.{name}_array", lambda name=name, later=later: self.token(payload=c(**{name: [later()]})))
            R(f"claims.{name}_object", lambda name=name, later=later: self.token(payload=c(**{name: {"t": later()}})))
        R("claims.exp_null", lambda: self.token(payload=c(exp=None)))
        R("claims.exp_-1e300", raw('"exp":-1e300', exp=OMIT))
        R("claims.exp_1e-300", raw('"exp":1e-300', exp=OMIT))

        for label, aud in (("number", 1), ("object", {"aud": svc}), ("array_with_number", [svc, 1]),
                           ("array_with_null", [svc, None]), ("nested_array", [[svc]]), ("empty_array", []),
                           ("empty_string", ""), ("null", None), ("wrong", "gitlab-ai-gateway"),
                           ("wrong_array", ["gitlab-ai-gateway"]), ("uppercase", svc.upper()),
                           ("trailing_space", svc + " "), ("prefix", svc[:-1]), ("boolean", True)):
            R(f"claims.aud_{label}", lambda aud=aud: self.token(payload=c(aud=aud)))
        R("claims.aud_missing", lambda: self.token(payload=c(aud=OMIT)))

        for label, iss in (("number", 1), ("array", [gl]), ("object", {"iss": gl}), ("null", None),
                           ("empty", ""), ("unknown", "https://gitlab.example.com"), ("trailing_slash", gl + "/"),
                           ("customersdot_array", [self.cd, gl]), ("boolean", True)):
            R(f"claims.iss_{label}", lambda iss=iss: self.token(payload=c(iss=iss)))
        R("claims.iss_missing", lambda: self.token(payload=c(iss=OMIT)))
        R("claims.iss_missing.kidless", lambda: self.token(self.header(kid=OMIT), c(iss=OMIT)))
        for label, sub in (("number", 777), ("array", [h.INSTANCE_ID]), ("object", {"id": h.INSTANCE_ID}),
                           ("boolean", True)):
            R(f"claims.sub_{label}", lambda sub=sub: self.token(payload=c(sub=sub)))
        for label, scopes in (("string", h.EXECUTE), ("string_of_both", f"{h.EXECUTE} {h.GENERATE}"),
                              ("number_array", [1, 2]), ("object", {h.EXECUTE: True, h.GENERATE: True}),
                              ("array_with_number", [h.EXECUTE, h.GENERATE, 1]), ("array_with_null", [h.EXECUTE, h.GENERATE, None]),
                              ("nested_array", [[h.EXECUTE, h.GENERATE]]), ("boolean", True), ("number", 1)):
            R(f"claims.scopes_{label}", lambda scopes=scopes: self.token(payload=c(scopes=scopes)))

    def time_rules(self):
        R, c = self.refused, self.claims

        def now():
            return int(time.time())

        R("time.missing_exp", lambda: self.token(payload=c(exp=OMIT)))
        R("time.missing_exp.kidless", lambda: self.token(self.header(kid=OMIT), c(exp=OMIT)))
        R("time.expired_90s_ago", lambda: self.token(payload=c(iat=now() - 3690, nbf=now() - 3690, exp=now() - 90)))
        R("time.expired_long_ago", lambda: self.token(payload=c(iat=now() - 86400, nbf=now() - 86400, exp=now() - 82800)))
        R("time.nbf_120s_in_future", lambda: self.token(payload=c(nbf=now() + 120)))
        R("time.iat_120s_in_future", lambda: self.token(payload=c(iat=now() + 120, nbf=OMIT)))
        R("time.iat_and_nbf_120s_in_future", lambda: self.token(payload=c(iat=now() + 120, nbf=now() + 120)))
        R("time.lifetime_30_days", lambda: self.token(payload=c(iat=now(), nbf=now(), exp=now() + 30 * 86400)))
        R("time.lifetime_30_days_issued_long_ago", lambda: self.token(payload=c(iat=now() - 30 * 86400, nbf=now() - 30 * 86400,
                                                                                exp=now() + 3600)))
        R("time.lifetime_30_days_no_iat_nbf", lambda: self.token(payload=c(iat=OMIT, nbf=OMIT, exp=now() + 30 * 86400)))

    def signatures(self):
        R, hd = self.refused, self.header
        rs256 = self.rs256

        def mangled(f, kidless=False):
            return lambda: self.token(hd(kid=OMIT) if kidless else hd(), sign=lambda d: f(rs256(d)))

        def flip(sig, i=None, bit=0x01):
            i = len(sig) // 2 if i is None else i
            return sig[:i] + bytes([sig[i] ^ bit]) + sig[i + 1:]

        R("signature.rsa_one_byte_short", mangled(lambda s: s[:-1]))
        R("signature.rsa_one_byte_short.kidless", mangled(lambda s: s[:-1], kidless=True))
        R("signature.rsa_one_byte_long", mangled(lambda s: s + b"\0"))
        R("signature.rsa_leading_zero_byte", mangled(lambda s: b"\0" + s))
        R("signature.rsa_leading_zero_byte.kidless", mangled(lambda s: b"\0" + s, kidless=True))
        R("signature.rsa_zeros", mangled(lambda s: b"\0" * len(s)))
        R("signature.rsa_zeros.kidless", mangled(lambda s: b"\0" * len(s), kidless=True))
        R("signature.rsa_all_ff", mangled(lambda s: b"\xff" * len(s)))
        R("signature.rsa_one", mangled(lambda s: b"\0" * (len(s) - 1) + b"\1"))
        R("signature.rsa_modulus", mangled(lambda s: self.K.public.public_numbers().n.to_bytes(256, "big")))
        R("signature.rsa_single_byte", mangled(lambda s: b"\1"))
        R("signature.rsa_512_bytes", mangled(lambda s: s + s))
        R("signature.rsa_flipped_bit_middle", mangled(flip))
        R("signature.rsa_flipped_bit_last", mangled(lambda s: flip(s, len(s) - 1)))
        R("signature.rsa_flipped_bit_first", mangled(lambda s: flip(s, 0, 0x80)))
        R("signature.rsa_flipped_bit.kidless", mangled(flip, kidless=True))

        def transplanted():
            other = self.good().split(".")[2]
            t = self.token()
            t = t.rsplit(".", 1)[0] + "." + other
            self.w.tokens.add(t)
            return t

        R("signature.transplanted_from_another_token", transplanted)

        def kid_stripped():
            ps = self.good().split(".")
            t = f"{segment(hd(kid=OMIT))}.{ps[1]}.{ps[2]}"
            self.w.tokens.add(t)
            return t

        R("signature.header_changed_after_signing", kid_stripped)

    def local_authority(self):
        """ECDSA attacks where ECDSA is legitimately verified: user tokens of the local authority."""
        R, w = self.refused, self.w
        A = w.authority
        n = P256_ORDER
        es = {"alg": "ES256", "typ": "JWT"}

        def user(sign, header=None):
            return lambda: self.token(header or es, self.user_claims(), sign)

        R("authority.ecdsa_der_signature", user(A.der_signer()))
        R("authority.ecdsa_der_signature.with_kid", lambda: self.token({**es, "kid": self.authority_kid or "x"},
                                                                     self.user_claims(), A.der_signer()))
        R("authority.ecdsa_r_zero", user(A.raw_signer(mangle=lambda r, s: (0, s))))
        R("authority.ecdsa_s_zero", user(A.raw_signer(mangle=lambda r, s: (r, 0))))
        R("authority.ecdsa_r_and_s_zero", user(lambda d: b"\0" * 64))
        R("authority.ecdsa_r_and_s_zero.with_kid", lambda: self.token({**es, "kid": self.authority_kid or "x"},
                                                                     self.user_claims(), lambda d: b"\0" * 64))
        R("authority.ecdsa_r_equals_order", user(A.raw_signer(mangle=lambda r, s: (n, s))))
        R("authority.ecdsa_s_equals_order", user(A.raw_signer(mangle=lambda r, s: (r, n))))
        R("authority.ecdsa_r_plus_order", user(A.raw_signer(mangle=lambda r, s: (r + n, s), size=33)))
        R("authority.ecdsa_one_byte_short", user(lambda d: A.raw_signer()(d)[:-1]))
        R("authority.ecdsa_one_byte_long", user(lambda d: A.raw_signer()(d) + b"\0"))
        R("authority.ecdsa_r_s_swapped", user(lambda d: (lambda sig: sig[32:] + sig[:32])(A.raw_signer()(d))))
        R("authority.ecdsa_flipped_bit", user(lambda d: (lambda sig: sig[:10] + bytes([sig[10] ^ 1]) + sig[11:])(A.raw_signer()(d))))
        R("authority.alg_none", user(no_signature, {"alg": "none", "typ": "JWT"}))
        R("authority.es384_header_p256_signature", user(A.raw_signer(), {"alg": "ES384", "typ": "JWT"}))
        R("authority.rs256_against_ec_key.attacker_rsa", user(rs_signer(w.attacker.private), {"alg": "RS256", "typ": "JWT"}))
        R("authority.rs256_naming_authority_kid_signed_by_gitlab_key",
          lambda: self.token({"alg": "RS256", "typ": "JWT", "kid": self.authority_kid or "x"}, self.user_claims()))
        R("authority.hs256_keyed_with_authority_public_pem", user(hs_signer(A.public_pem()), {"alg": "HS256", "typ": "JWT"}))
        R("authority.hs256_keyed_with_authority_jwk_json",
          user(hs_signer(json.dumps(A.jwk()).encode()), {"alg": "HS256", "typ": "JWT"}))
        R("authority.jwk_attacker_ec_key", user(w.attacker_ec.raw_signer(), {**es, "jwk": w.attacker_ec.jwk()}))
        R("authority.unpublished_ec_key", user(w.attacker_ec.raw_signer()))

    def authorization_entries(self):
        h, R = self.h, self.refused
        rest = h.metadata(None)  # every other header as GitLab sends it

        def two(first, second):
            return (("authorization", first), ("authorization", second)) + rest

        def dup(name, make):
            def attack():
                a, b = make()
                h.expect_status(h.generate_token(self.p.stub, two(a, b)), h.UNAUTHENTICATED, h.INVALID_AUTHORIZATION)

            self.case(f"authorization.{name}", attack)

        dup("two_entries_both_good", lambda: (f"Bearer {self.good()}", f"Bearer {self.good()}"))
        dup("two_entries_same_good_token", lambda: (lambda v: (v, v))(f"Bearer {self.good()}"))
        dup("two_entries_good_then_garbage", lambda: (f"Bearer {self.good()}", "Bearer a.b.c"))
        dup("two_entries_garbage_then_good", lambda: ("Bearer a.b.c", f"Bearer {self.good()}"))
        dup("two_entries_good_then_empty", lambda: (f"Bearer {self.good()}", ""))
        dup("two_entries_empty_then_good", lambda: ("", f"Bearer {self.good()}"))
        dup("two_entries_basic_then_good", lambda: ("Basic dXNlcjpwYXNz", f"Bearer {self.good()}"))
        R("authorization.comma_joined_two_values", lambda: f"{self.good()},Bearer {self.good()}",
          details=h.INVALID_AUTHORIZATION)
        R("authorization.three_words_two_tokens", lambda: f"{self.good()} {self.good()}", details=h.INVALID_AUTHORIZATION)
        R("authorization.bearer_bearer", lambda: f"Bearer {self.good()}", details=h.INVALID_AUTHORIZATION)

        def edge(name, make):
            # Leading/trailing whitespace: HTTP/2 (RFC 9113 8.2.1) makes the field malformed, so
            # the transport may refuse the stream; if the service sees it, it is not two words.
            def attack():
                try:
                    out = h.generate_token(self.p.stub, h.metadata(authorization=make()))
                except ValueError as e:
                    print(f"# authorization.{name}: the client refused to send it: {e}", flush=True)
                    return
                h.expect(not out.ok, f"accepted: {out!r}")
                if out.code == h.UNAUTHENTICATED:
                    h.expect_equal("details", out.details, h.INVALID_AUTHORIZATION)
                print(f"# authorization.{name}: {out!r}", flush=True)

            self.case(f"authorization.{name}", attack, channel_retry=True)

        edge("leading_space", lambda: f" Bearer {self.good()}")
        edge("trailing_space", lambda: f"Bearer {self.good()} ")

    def metadata_limits(self):
        h = self.h
        self.any_error("metadata.64KiB_header_value",
                       lambda: h.metadata(self.good()) + (("x-hostile-padding", "a" * 65536),))
        self.any_error("metadata.64KiB_authorization_value", lambda: h.metadata(authorization="Bearer " + "a" * 65536))
        # About 34 KiB counted as HPACK does: above the 24 KiB limit, below h2's 64 KiB cap.
        self.any_error("metadata.60_headers_of_512_bytes",
                       lambda: h.metadata(self.good()) + tuple((f"x-hostile-{i}", "b" * 512) for i in range(60)))
        self.any_error("metadata.2000_tiny_headers",
                       lambda: h.metadata(self.good()) + tuple((f"x-h{i}", "c") for i in range(2000)))
        self.s.check("hostile.metadata.control_8KiB_of_small_headers_accepted", lambda: h.expect_ok(h.generate_token(
            self.p.stub, h.metadata(self.good()) + tuple((f"x-hostile-{i}", "d" * 256) for i in range(32)))))

    def raw_http2(self):
        """Header values grpcio will not send (a tab, obs-text, NUL, an upper-case name), on raw HTTP/2."""
        h = self.h

        def md(authorization, name=b"authorization"):
            rest = [(k.encode(), v.encode()) for k, v in h.metadata(None)]
            return [(name, authorization)] + rest

        def call(metadata):
            return raw_grpc_call(h, self.p.port, metadata)

        def control():
            out = call(md(f"Bearer {self.good()}".encode()))
            h.expect(out.ok and out.data, f"a good token over raw HTTP/2: {out!r}")

        if not self.s.check("hostile.raw_http2.control_good_token_accepted", control):
            return
        self.case("raw_http2.control_garbage_token_forbidden", lambda: h.expect_equal(
            "outcome", repr(call(md(b"Bearer a.b.c"))), f"grpc-status 16 {h.FORBIDDEN!r}"))

        def expect_refused(details):
            def check(out):
                h.expect(not out.ok, f"accepted: {out!r}")
                h.expect_equal("outcome", repr(out), f"grpc-status 16 {details!r}")
            return check

        def refused_or_malformed(*allowed):
            # The transport may refuse a malformed field (RFC 9113 8.2.1) by resetting the stream.
            def check(out):
                h.expect(not out.ok, f"accepted: {out!r}")
                if out.grpc_status is not None:
                    h.expect(out.grpc_status == "16" and out.grpc_message in allowed, f"got {out!r}")
                print(f"# raw HTTP/2: {out!r}", flush=True)
            return check

        def raw_case(name, value_fn, check, header=b"authorization"):
            self.case(f"raw_http2.{name}", lambda: check(call(md(value_fn(), header))))

        def split(t):
            a, b, c = t.split(".")
            return a, b, c

        raw_case("tab_inside_token", lambda: (lambda a, b, c: f"Bearer {a}.{b[:10]}\t{b[10:]}.{c}".encode())(*split(self.good())),
                 expect_refused(h.FORBIDDEN))
        raw_case("tab_as_separator", lambda: f"Bearer\t{self.good()}".encode(), expect_refused(h.INVALID_AUTHORIZATION))
        # Two space-separated words, the second "\t<jwt>": a token with a tab in it.
        raw_case("space_then_tab_before_token", lambda: f"Bearer \t{self.good()}".encode(), expect_refused(h.FORBIDDEN))
        raw_case("trailing_tab", lambda: f"Bearer {self.good()}\t".encode(),
                 refused_or_malformed(h.FORBIDDEN, h.INVALID_AUTHORIZATION))
        raw_case("obs_text_in_token", lambda: f"Bearer {self.good()}\u00e9".encode(),
                 refused_or_malformed(h.FORBIDDEN, h.INVALID_AUTHORIZATION))
        raw_case("latin1_byte_in_token", lambda: f"Bearer {self.good()}".encode() + b"\xff",
                 refused_or_malformed(h.FORBIDDEN, h.INVALID_AUTHORIZATION))
        raw_case("nul_in_token", lambda: f"Bearer {self.good()}".encode() + b"\0", refused_or_malformed())
        raw_case("cr_lf_in_value", lambda: f"Bearer {self.good()}\r\nx-injected: 1".encode(), refused_or_malformed())
        raw_case("uppercase_header_name", lambda: f"Bearer {self.good()}".encode(),
                 refused_or_malformed(h.NO_AUTHORIZATION), header=b"Authorization")
        raw_case("vertical_tab_separator", lambda: f"Bearer\x0b{self.good()}".encode(),
                 refused_or_malformed(h.INVALID_AUTHORIZATION))

    def flood(self):
        h, w = self.h, self.w
        state = {}

        def flood():
            tokens = [self.token(self.header(kid=f"random-{uuid.uuid4().hex}")) for _ in range(FLOOD)]
            before = w.gitlab.jwks_gets()
            t0 = time.monotonic()
            with futures.ThreadPoolExecutor(max_workers=32) as pool:
                outcomes = list(pool.map(lambda t: h.generate_token(self.p.stub, h.metadata(t)), tokens))
            seconds = time.monotonic() - t0
            state["fetches"] = w.gitlab.jwks_gets() - before
            print(f"# hostile random-kid flood: {FLOOD} tokens in {seconds:.2f} s, JWKS GETs {state['fetches']}", flush=True)
            wrong = [o for o in outcomes if o.code != h.UNAUTHENTICATED or o.details != h.FORBIDDEN]
            h.expect(not wrong, f"{len(wrong)} of {FLOOD} not refused with {h.FORBIDDEN!r}, e.g. {wrong[:3]}")

        self.case("flood.200_random_kids_all_forbidden", flood)
        self.s.check("hostile.flood.at_most_one_jwks_fetch", lambda: h.expect(
            "fetches" in state and state["fetches"] <= 1, f"JWKS GETs during the flood: {state.get('fetches')}"))

    def finish(self):
        h, s, w = self.h, self.s, self.w
        s.check("hostile.attacker_urls_never_fetched",
                lambda: h.expect(not w.evil.requests, f"the service fetched {w.evil.requests} from the attacker's server"))
        s.check("hostile.final.process_alive", lambda: h.expect(self.p.alive(), f"exited with {self.p.proc.returncode}"))
        s.check("hostile.final.health_serving", lambda: h.expect_equal("health", h.health(self.p.channel).value, "SERVING"))
        s.check("hostile.final.good_token_accepted", lambda: h.expect_ok(h.generate_token(self.p.stub, h.metadata(self.good()))))


def log_checks(s, h, w: HostileWorld) -> None:
    """After the process stopped: no panic, no token in the log."""
    p = w.process

    def no_panic():
        text = p.log_text()
        h.expect(text != "", "the log is empty")
        h.expect("panicked" not in text, "the log contains 'panicked': " + " | ".join(
            line for line in text.splitlines() if "panicked" in line)[:500])

    s.check("hostile.log.no_panic", no_panic)

    def no_tokens():
        text = p.log_text()
        for token in w.tokens:
            parts = token.split(".")
            for needle in [token] + parts[1:]:
                if len(needle) >= 16:
                    h.expect(needle not in text, f"a token (or its payload/signature) is in the log: {needle[:24]}...")

    s.check("hostile.log.no_tokens", no_tokens)


# ---- weak keys, cheap failures, secrets and the Host header (checklist rows 28-32, 34) ------


class RawJwk:
    """A JWKS entry served exactly as given (weak keys the `cryptography` package will not make)."""

    def __init__(self, jwk: dict):
        self.value = jwk

    def jwk(self) -> dict:
        return self.value


# The Ed25519 encodings of points of small order, and two non-canonical ones (y = p, p + 1).
SMALL_ORDER_ED25519 = [
    bytes.fromhex(x)
    for x in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
]


def weak_keys_and_pages(s, h, binary: str, log_dir) -> None:
    """Issue 9's attacks, replayed by this independent peer against the binary: forging with a
    small-order Ed25519 key from a provider that allows EdDSA; an RSA key with e = 1 and an
    ambiguous kid; a provider URL carrying a password and a private token; the Host header
    choosing the published jwks_uri."""
    servers, process = [], None
    good = h.Key("weak-good-rsa")
    weak = [RawJwk({"kty": "OKP", "crv": "Ed25519", "kid": f"small-{i}", "x": b64url(p)})
            for i, p in enumerate(SMALL_ORDER_ED25519)]
    numbers = good.public.public_numbers()
    e_one = RawJwk({"kty": "RSA", "kid": "e-one", "e": h.int_b64url(1), "n": h.int_b64url(numbers.n)})
    twin = h.Key("weak-twin-rsa")
    twin.kid = good.kid  # two keys, one kid: ambiguous
    try:
        issuer = h.OidcIssuer("weak-idp", [good, twin, e_one] + weak)
        servers.append(issuer)
        dead_port = h.free_port()
        config = log_dir / "weak-keys.toml"
        config.write_text(
            "[[key_sources]]\ntype = \"oidc\"\nname = \"weak-idp\"\n"
            f"issuer = \"{issuer.base}\"\nalgorithms = [\"RS256\", \"EdDSA\"]\n"
            "[[key_sources]]\ntype = \"jwks\"\nname = \"secret-url\"\nissuer = \"https://secret.example\"\n"
            f"jwks_uri = \"http://alice:s3cr3t-pw@127.0.0.1:{dead_port}/keys?private_token=tok-123\"\n"
        )
        process = h.ServiceProcess("weak-keys", binary, {
            "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": "",
            "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": "",
        }, log_dir, config=config)
        process.wait_ready()

        def claims():
            now = int(time.time())
            return {"iss": issuer.base, "aud": h.SERVICE_NAME, "sub": h.INSTANCE_ID, "iat": now,
                    "exp": now + 600, "scopes": [h.GENERATE], "gitlab_realm": h.REALM,
                    "gitlab_instance_id": h.INSTANCE_ID}

        def forged(kid):
            # For the identity point, R = identity and S = 0 verify for every message.
            signature = b"\x01" + b"\x00" * 63
            return h.handmade_jws({"alg": "EdDSA", "typ": "JWT", "kid": kid}, claims(), lambda _: signature)

        for key in weak:
            kid = key.value["kid"]
            s.check(f"weak_keys.forged_with_{kid}_refused", lambda kid=kid: h.expect_status(
                h.generate_token(process.stub, h.metadata(forged(kid))), h.UNAUTHENTICATED, h.FORBIDDEN))
        def e_one_forgery(data: bytes) -> bytes:
            # With e = 1, s^e mod n = s: the padded digest itself is a "signature".
            prefix = bytes.fromhex("3031300d060960864801650304020105000420")
            k = (numbers.n.bit_length() + 7) // 8
            return b"\x00\x01" + b"\xff" * (k - 3 - len(prefix) - 32) + b"\x00" + prefix + hashlib.sha256(data).digest()

        e_one_token = h.handmade_jws({"alg": "RS256", "kid": "e-one"}, claims(), e_one_forgery)
        s.check("weak_keys.rsa_exponent_1_dropped", lambda: h.expect_status(
            h.generate_token(process.stub, h.metadata(e_one_token)), h.UNAUTHENTICATED, h.FORBIDDEN))
        ambiguous = h.handmade_jws({"alg": "RS256", "kid": good.kid}, claims(), rs_signer(good.private))
        s.check("weak_keys.ambiguous_kid_refused", lambda: h.expect_status(
            h.generate_token(process.stub, h.metadata(ambiguous)), h.UNAUTHENTICATED, h.FORBIDDEN))
        kidless = h.handmade_jws({"alg": "RS256"}, claims(), rs_signer(good.private))
        s.check("weak_keys.kidless_token_of_a_good_key_accepted", lambda: h.expect_ok(
            h.generate_token(process.stub, h.metadata(kidless))))

        def secrets_not_logged():
            deadline = time.monotonic() + 10
            while "key fetch failed" not in process.log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            text = process.log_text()
            h.expect("key fetch failed" in text, "the failing source never logged its failure")
            for secret in ("s3cr3t", "tok-123", "alice"):
                h.expect(secret not in text, f"{secret!r} appears in the log")

        s.check("weak_keys.provider_url_secrets_never_logged", secrets_not_logged)

        def host_header():
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", process.http_port, timeout=h.RPC_TIMEOUT)
            conn.putrequest("GET", "/.well-known/openid-configuration", skip_host=True)
            conn.putheader("Host", "attacker.example")
            conn.endheaders()
            r = conn.getresponse()
            body = json.loads(r.read())
            h.expect(r.status == 200, f"status {r.status}")
            h.expect(body["jwks_uri"].startswith("http://attacker.example/"), body["jwks_uri"])
            cache = (r.getheader("Cache-Control") or "").lower()
            h.expect("no-store" in cache and "public" not in cache, f"Cache-Control {cache!r}")
            h.expect((r.getheader("Vary") or "").lower() == "host", f"Vary {r.getheader('Vary')!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", process.http_port, timeout=h.RPC_TIMEOUT)
            conn.putrequest("GET", "/.well-known/openid-configuration", skip_host=True)
            conn.putheader("Host", "attacker.example/evil")
            conn.endheaders()
            r = conn.getresponse()
            r.read()
            h.expect(r.status == 400, f"a malformed Host got {r.status}")
            conn.close()

        s.check("weak_keys.host_header_document_not_publicly_cacheable", host_header)
    except Exception as e:
        s.fail("weak_keys.setup", f"{type(e).__name__}: {e}")
    finally:
        if process is not None:
            process.stop()
            s.check("weak_keys.log.no_panic", lambda: h.expect("panicked" not in process.log_text(), "a panic"))
        for server in servers:
            server.stop()


def run(s, h, binary: str, log_dir) -> None:
    """The battery; `h` is the interop_test module (its helpers, stubs and constants)."""
    s.deadline = max(s.deadline, time.monotonic() + HOSTILE_BUDGET)
    started = time.monotonic()
    w = None
    battery = None
    try:
        w = HostileWorld(h, binary, log_dir)
        battery = Battery(s, h, w)
        if battery.setup():
            battery.flood()  # first: no earlier miss has used up the refetch window
            battery.alg()
            battery.header_key_material()
            battery.kid()
            battery.structure()
            battery.json_documents()
            battery.claim_types()
            battery.time_rules()
            battery.signatures()
            battery.local_authority()
            battery.authorization_entries()
            battery.metadata_limits()
            battery.raw_http2()
        battery.finish()
        weak_keys_and_pages(s, h, binary, log_dir)
    except Exception as e:
        s.fail("hostile.setup", f"{type(e).__name__}: {e}")
    finally:
        if w is not None:
            w.stop()
            if w.process is not None:
                log_checks(s, h, w)
                if s.failed:
                    for line in w.process.log_text().splitlines()[-8:]:
                        print(f"# hostile | {line}", flush=True)
    print(f"# hostile battery: {battery.count if battery else 0} hostile cases in {time.monotonic() - started:.1f}s",
          flush=True)


def main(argv) -> int:
    """The battery alone (interop/run.sh runs them as part of the whole suite):
    `python interop/hostile_test.py BINARY`."""
    import interop_test as h

    return h.run_alone(argv, run, "dws-hostile-")


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
