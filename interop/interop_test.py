#!/usr/bin/env python3
"""Interoperability suite for the Duo Workflow Service auth core (SPEC.md, Part A).

Everything the service talks to is played here, in Python, the way GitLab's own components do it:

* two OIDC issuers ("GitLab" and "CustomersDot") serving a discovery document and a JWKS,
* instance tokens minted with PyJWT like GitLab Rails mints them (RS256, no `kid`),
* a workflow executor upstream speaking the DuoWorkflow contract with grpcio,
* grpcio clients checking exact status codes and `details()` strings.

Three service processes run: the main one (auth on, upstream configured), a debug one (auth off)
and one without an upstream (custom service name, CustomersDot disabled).

Usage: interop_test.py BINARY.  Prints `PASS name` / `FAIL name: why` per check and ends with
`N passed, N failed`; exits non-zero on any failure.
"""

import base64
import hashlib
import hmac
import http.server
import importlib
import importlib.resources
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
CONTRACT_PROTO = REPO / "proto" / "contract.proto"

SERVICE_NAME = "gitlab-duo-workflow-service"
CUSTOM_SERVICE_NAME = "interop-custom-workflow-service"
EXECUTE = "duo_workflow_execute_workflow"
GENERATE = "duo_workflow_generate_token"

INSTANCE_ID = "5c6a2a3e-8e7e-4b53-9d1f-3c1f1d2a4b5c"
USER_ID = "777"
REALM = "saas"

RPC_TIMEOUT = 3.0  # seconds, every unary call
STREAM_TIMEOUT = 5.0  # seconds, every ExecuteWorkflow call
SUITE_BUDGET = 90.0  # seconds; checks still to run after that fail at once instead of waiting
STARTUP_TIMEOUT = 30.0  # seconds until a process answers gRPC health
KEYS_TIMEOUT = 15.0  # seconds until an instance token is accepted (OIDC keys fetched)

CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
NO_AUTHORIZATION = "No authorization header presented"
INVALID_AUTHORIZATION = "Invalid authorization header"
INVALID_TYPE = "Invalid authentication token type - only OIDC is supported"
FORBIDDEN = "Forbidden by auth provider"

HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""

# Every token sent or received, to check none of them reaches a log.
SEEN_TOKENS = set()

# Filled by load_stubs().
pb = None  # contract_pb2
pb_grpc = None  # contract_pb2_grpc
health_pb = None
health_grpc = None


class Failure(Exception):
    """A check's expectation was not met."""


# --------------------------------------------------------------------------------------------
# Generated stubs (into a temp dir, never into the repository)
# --------------------------------------------------------------------------------------------


def load_stubs(out_dir: Path) -> None:
    global pb, pb_grpc, health_pb, health_grpc
    (out_dir / "interop_health.proto").write_text(HEALTH_PROTO)
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    for proto_dir, name in [(CONTRACT_PROTO.parent, CONTRACT_PROTO.name), (out_dir, "interop_health.proto")]:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"-I{include}",
                f"--python_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(Path(proto_dir) / name),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {name} (exit {rc})")
    sys.path.insert(0, str(out_dir))
    stem = CONTRACT_PROTO.stem
    pb = importlib.import_module(f"{stem}_pb2")
    pb_grpc = importlib.import_module(f"{stem}_pb2_grpc")
    health_pb = importlib.import_module("interop_health_pb2")
    health_grpc = importlib.import_module("interop_health_pb2_grpc")


# --------------------------------------------------------------------------------------------
# Keys and tokens
# --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_b64url(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Key:
    """An RSA key pair with a kid and its PEM forms."""

    def __init__(self, kid: str):
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public = self.private.public_key()

    def pem_pkcs1(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()

    def pem_pkcs8(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict:
        numbers = self.public.public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "e": int_b64url(numbers.e),
            "n": int_b64url(numbers.n),
            "use": "sig",
            "alg": "RS256",
        }


OMIT = object()


def mint(
    key: Key,
    *,
    iss,
    aud=SERVICE_NAME,
    sub=INSTANCE_ID,
    scopes=(EXECUTE,),
    realm=REALM,
    instance_id=INSTANCE_ID,
    seat_count=OMIT,
    with_kid=False,
    iat_offset=0,
    lifetime=3600,
    nbf_offset=-5,
    omit=(),
) -> str:
    """A token like GitLab Rails mints (RS256, no kid unless asked). Pass OMIT to leave a claim out."""
    now = int(time.time()) + iat_offset
    claims = {
        "iss": iss,
        "aud": aud,
        "sub": sub,
        "iat": now,
        "nbf": now + nbf_offset,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
        "gitlab_realm": realm,
        "gitlab_instance_id": instance_id,
        "scopes": list(scopes) if scopes is not OMIT else OMIT,
        "duo_seat_count": seat_count,
    }
    claims = {k: v for k, v in claims.items() if v is not OMIT and k not in omit}
    headers = {"kid": key.kid} if with_kid else None
    token = jwt.encode(claims, key.private, algorithm="RS256", headers=headers)
    SEEN_TOKENS.add(token)
    return token


def mint_user_token(key: Key, *, sub=USER_ID, service=SERVICE_NAME, **kw) -> str:
    """A user token as this service would mint it, signed by `key` but without a kid (the
    service's kids are its own business; kid-less tokens are tried against the issuer's keys)."""
    kw.setdefault("scopes", (EXECUTE,))
    kw.setdefault("nbf_offset", 0)
    return mint(key, iss=service, aud=service, sub=sub, **kw)


def handmade_jws(header: dict, claims: dict, sign) -> str:
    """A compact JWS built by hand, for tokens PyJWT refuses to make. `sign(signing_input) -> bytes`."""
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    token = signing_input + "." + b64url(sign(signing_input.encode()))
    SEEN_TOKENS.add(token)
    return token


def ijwt_claims(iss: str) -> dict:
    now = int(time.time())
    return {
        "iss": iss,
        "aud": SERVICE_NAME,
        "sub": INSTANCE_ID,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
        "gitlab_realm": REALM,
        "gitlab_instance_id": INSTANCE_ID,
        "scopes": [EXECUTE, GENERATE],
    }


# --------------------------------------------------------------------------------------------
# Metadata and calls
# --------------------------------------------------------------------------------------------


def metadata(
    token=None,
    *,
    scheme="Bearer",
    authorization=OMIT,
    auth_type="oidc",
    realm=REALM,
    instance_id=INSTANCE_ID,
    user_id=USER_ID,
    seat_count="17",
    request_id=None,
):
    """gRPC metadata as a GitLab instance sends it. `None` leaves a header out; `authorization`
    overrides the `<scheme> <token>` value verbatim."""
    auth = authorization if authorization is not OMIT else (f"{scheme} {token}" if token is not None else None)
    pairs = [
        ("authorization", auth),
        ("x-gitlab-authentication-type", auth_type),
        ("x-gitlab-realm", realm),
        ("x-gitlab-instance-id", instance_id),
        ("x-gitlab-global-user-id", user_id),
        ("x-gitlab-duo-seat-count", seat_count),
        ("x-request-id", request_id),
    ]
    return tuple((k, v) for k, v in pairs if v is not None)


class Outcome:
    """What a call ended with: OK and a value, or a status code and details."""

    def __init__(self, code=grpc.StatusCode.OK, details="", value=None, trailing=None):
        self.code = code
        self.details = details
        self.value = value
        self.trailing = trailing or ()

    @property
    def ok(self):
        return self.code == grpc.StatusCode.OK

    def __repr__(self):
        return f"{self.code.name} {self.details!r}" if not self.ok else "OK"


def generate_token(stub, md, request=None) -> Outcome:
    try:
        response = stub.GenerateToken(request or pb.GenerateTokenRequest(), metadata=md, timeout=RPC_TIMEOUT)
        SEEN_TOKENS.add(response.token)
        return Outcome(value=response)
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details())


def start_event(goal: str, workflow_id: str) -> "pb.ClientEvent":
    return pb.ClientEvent(
        startRequest=pb.StartWorkflowRequest(
            clientVersion="interop-1.0",
            workflowID=workflow_id,
            workflowDefinition="software_development",
            goal=goal,
            workflowMetadata='{"source":"interop"}',
            clientCapabilities=["shell_command"],
        )
    )


def execute_workflow(stub, md, goal="say hello", workflow_id=None, respond=None) -> Outcome:
    """Streams a startRequest (then, if `respond` is given, its answer to the first action) and
    collects the actions. Outcome.value is the list of actions received, even on error."""
    workflow_id = workflow_id or str(uuid.uuid4())
    events: "queue.Queue" = queue.Queue()
    events.put(start_event(goal, workflow_id))
    if respond is None:
        events.put(None)

    def requests():
        while True:
            event = events.get()
            if event is None:
                return
            yield event

    actions = []
    call = stub.ExecuteWorkflow(requests(), metadata=md, timeout=STREAM_TIMEOUT)
    try:
        for action in call:
            actions.append(action)
            if respond is not None and len(actions) == 1:
                events.put(respond(action))
                events.put(None)
        return Outcome(value=actions, trailing=call.trailing_metadata() or ())
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details(), value=actions)
    finally:
        events.put(None)


def health(channel, service="") -> Outcome:
    try:
        stub = health_grpc.HealthStub(channel)
        response = stub.Check(health_pb.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        return Outcome(value=health_pb.HealthCheckResponse.ServingStatus.Name(response.status))
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details())


def expect_status(outcome: Outcome, code: grpc.StatusCode, details: str = None) -> None:
    if outcome.code != code or (details is not None and outcome.details != details):
        want = f"{code.name} {details!r}" if details is not None else code.name
        raise Failure(f"expected {want}, got {outcome!r}")


def expect_ok(outcome: Outcome) -> None:
    if not outcome.ok:
        raise Failure(f"expected OK, got {outcome!r}")


def expect_equal(what: str, got, want) -> None:
    if got != want:
        raise Failure(f"{what}: expected {want!r}, got {got!r}")


def expect(condition: bool, why: str) -> None:
    if not condition:
        raise Failure(why)


# --------------------------------------------------------------------------------------------
# The OIDC issuers
# --------------------------------------------------------------------------------------------


class OidcIssuer:
    """An OIDC issuer like GitLab: discovery document and JWKS over plain HTTP on loopback."""

    def __init__(self, name: str, keys):
        self.name = name
        self.keys = list(keys)
        self.requests = []
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                issuer.requests.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    self.reply(issuer.discovery(), "max-age=86400")
                elif self.path == "/oauth/discovery/keys":
                    self.reply({"keys": [k.jwk() for k in issuer.keys]}, "max-age=86400, public")
                else:
                    self.send_error(404)

            def reply(self, document, cache_control):
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Cache-Control", cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"oidc-{name}", daemon=True)
        self.thread.start()

    def discovery(self) -> dict:
        b = self.base
        return {
            "issuer": b,
            "authorization_endpoint": f"{b}/oauth/authorize",
            "token_endpoint": f"{b}/oauth/token",
            "revocation_endpoint": f"{b}/oauth/revoke",
            "introspection_endpoint": f"{b}/oauth/introspect",
            "userinfo_endpoint": f"{b}/oauth/userinfo",
            "jwks_uri": f"{b}/oauth/discovery/keys",
            "scopes_supported": ["api", "read_user", "openid", "profile", "email"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "grant_types_supported": ["authorization_code", "password", "client_credentials", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claim_types_supported": ["normal"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "sub_legacy", "name", "email"],
        }

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------------------------
# The upstream workflow executor
# --------------------------------------------------------------------------------------------


class Executor:
    """A workflow executor speaking DuoWorkflow. It records each stream's metadata and first event.

    Behaviour by goal: "abort" aborts before any action; "abort-after-action" sends one action
    then aborts; "roundtrip" sends one action, reads the client's answer and echoes it in a second
    action; anything else sends two actions and ends."""

    ABORT_CODE = grpc.StatusCode.FAILED_PRECONDITION
    ABORT_DETAILS = "upstream refused the workflow: interop abort"
    LATE_ABORT_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED
    LATE_ABORT_DETAILS = "upstream ran out of budget"

    def __init__(self):
        self.calls = {}  # workflowID -> {"metadata": [(k, v)], "start": StartWorkflowRequest}
        self.lock = threading.Lock()
        executor = self

        class Servicer(pb_grpc.DuoWorkflowServicer):
            def ExecuteWorkflow(self, request_iterator, context):  # noqa: N802
                first = next(request_iterator, None)
                start = first.startRequest if first is not None and first.HasField("startRequest") else None
                record = {"metadata": list(context.invocation_metadata()), "start": start}
                with executor.lock:
                    executor.calls[start.workflowID if start else ""] = record
                goal = start.goal if start else ""
                if goal == "abort":
                    context.abort(Executor.ABORT_CODE, Executor.ABORT_DETAILS)
                yield pb.Action(requestID="1", runReadFile=pb.ReadFile(filepath="README.md"))
                if goal == "abort-after-action":
                    context.abort(Executor.LATE_ABORT_CODE, Executor.LATE_ABORT_DETAILS)
                if goal == "roundtrip":
                    answer = next(request_iterator, None)
                    text = answer.actionResponse.response if answer and answer.HasField("actionResponse") else "<none>"
                    yield pb.Action(requestID="2", runCommand=pb.RunCommandAction(program="echo", arguments=[text]))
                    return
                yield pb.Action(
                    requestID="2",
                    runCommand=pb.RunCommandAction(program="ls", arguments=["-la"], flags=["--color=never"]),
                )

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_DuoWorkflowServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def call_for(self, workflow_id: str):
        with self.lock:
            return self.calls.get(workflow_id)

    def stop(self):
        self.server.stop(grace=None)


def expected_actions():
    """What the executor sends for an ordinary goal."""
    return [
        pb.Action(requestID="1", runReadFile=pb.ReadFile(filepath="README.md")),
        pb.Action(requestID="2", runCommand=pb.RunCommandAction(program="ls", arguments=["-la"], flags=["--color=never"])),
    ]


# --------------------------------------------------------------------------------------------
# The service processes
# --------------------------------------------------------------------------------------------


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environment() -> dict:
    """The parent's environment less anything that configures the service."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DUO_WORKFLOW_", "CLOUD_CONNECTOR_")) and k not in ("PORT",)
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    return env


class ServiceProcess:
    def __init__(self, name: str, binary: str, settings: dict, log_dir: Path):
        self.name = name
        self.port = free_port()
        self.http_port = free_port()
        env = clean_environment()
        env.update({"PORT": str(self.port), "DUO_WORKFLOW_HTTP__PORT": str(self.http_port)})
        env.update(settings)
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.channel = None
        self.stub = None

    def wait_ready(self) -> None:
        """Until the port accepts and gRPC health answers (any status)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"{self.name} exited with {self.proc.returncode}: {self.log_tail(5)}")
            if time.monotonic() > deadline:
                raise Failure(f"{self.name} did not answer within {STARTUP_TIMEOUT:.0f}s")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.DuoWorkflowStub(self.channel)
        while True:
            outcome = health(self.channel)
            if outcome.ok:
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise Failure(f"{self.name}: gRPC health never answered: {outcome!r}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return ANSI_ESCAPE.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def log_tail(self, lines: int) -> str:
        return " | ".join(self.log_text().splitlines()[-lines:]) or "<empty log>"

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------


class Suite:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.deadline = time.monotonic() + SUITE_BUDGET

    def check(self, name: str, fn) -> bool:
        if time.monotonic() > self.deadline:
            self.fail(name, f"not run: the suite's {SUITE_BUDGET:.0f}s budget is spent (is the service hanging?)")
            return False
        try:
            fn()
        except Failure as e:
            self.fail(name, str(e))
            return False
        except Exception as e:  # a bug in the check or an unexpected behaviour: report, go on
            self.fail(name, f"unexpected {type(e).__name__}: {e}")
            return False
        print(f"PASS {name}", flush=True)
        self.passed += 1
        return True

    def fail(self, name: str, why: str) -> None:
        why = " ".join(why.split())  # one line per check, whatever the reason's text
        print(f"FAIL {name}: {why}", flush=True)
        self.failed += 1


class World:
    """Keys, issuers, the executor and the three service processes."""

    def __init__(self, binary: str, log_dir: Path):
        self.gitlab_old = Key("gitlab-key-2024")
        self.gitlab_new = Key("gitlab-key-2025")
        self.cdot = Key("customersdot-key-1")
        self.signing = Key("unused")  # the service derives its own kid
        self.validation = Key("unused-too")
        self.rogue = Key("rogue-key")

        self.processes = []
        self.gitlab = OidcIssuer("gitlab", [self.gitlab_old, self.gitlab_new])
        self.customers_dot = OidcIssuer("customersdot", [self.cdot])
        self.executor = Executor()

        common = {
            "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": self.gitlab.base,
            "DUO_WORKFLOW_SELF_SIGNED_JWT__SIGNING_KEY": self.signing.pem_pkcs1(),
            "DUO_WORKFLOW_SELF_SIGNED_JWT__VALIDATION_KEY": self.validation.pem_pkcs8(),
        }
        self.main = self.spawn(
            "main",
            binary,
            log_dir,
            {
                **common,
                "DUO_WORKFLOW_AUTH__ENABLED": "true",
                "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": self.customers_dot.base,
                "DUO_WORKFLOW_CLOUD_CONNECTOR_SERVICE_NAME": SERVICE_NAME,
                "DUO_WORKFLOW_UPSTREAM__URL": self.executor.url,
            },
        )
        self.debug = self.spawn(
            "debug",
            binary,
            log_dir,
            {
                **common,
                "DUO_WORKFLOW_AUTH__ENABLED": "False",
                "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": self.customers_dot.base,
                "DUO_WORKFLOW_UPSTREAM__URL": self.executor.url,
            },
        )
        self.no_upstream = self.spawn(
            "no-upstream",
            binary,
            log_dir,
            {
                **common,
                "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": "",
                "DUO_WORKFLOW_CLOUD_CONNECTOR_SERVICE_NAME": CUSTOM_SERVICE_NAME,
            },
        )

    def spawn(self, name, binary, log_dir, settings) -> ServiceProcess:
        p = ServiceProcess(name, binary, settings, log_dir)
        self.processes.append(p)
        return p

    def stop(self):
        for p in self.processes:
            try:
                p.stop()
            except Exception as e:  # keep stopping the rest
                print(f"# could not stop {p.name}: {e}", flush=True)
        for thing in (self.executor, self.gitlab, self.customers_dot):
            try:
                thing.stop()
            except Exception as e:
                print(f"# could not stop {thing}: {e}", flush=True)

    # ---- tokens ---------------------------------------------------------------------------

    def ijwt(self, **kw) -> str:
        """A kid-less GitLab.com instance token with both scopes unless told otherwise."""
        kw.setdefault("scopes", (EXECUTE, GENERATE))
        kw.setdefault("iss", self.gitlab.base)
        return mint(self.gitlab_new, **kw)

    def good_md(self, **kw):
        return metadata(self.ijwt(), **kw)


def wait_for_keys(process: ServiceProcess, md) -> Outcome:
    """Retries a good GenerateToken until it succeeds (the OIDC keys arrive in the background)."""
    deadline = time.monotonic() + KEYS_TIMEOUT
    while True:
        outcome = generate_token(process.stub, md)
        if outcome.ok or time.monotonic() > deadline:
            return outcome
        time.sleep(0.25)


def decode_user_token(token: str, key: Key, service=SERVICE_NAME):
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token,
        key.public,
        algorithms=["RS256"],
        audience=service,
        issuer=service,
        leeway=5,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    return header, claims


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


def scenarios_readiness(s: Suite, w: World) -> None:
    for p in w.processes:
        s.check(f"startup.{p.name}.answers_health", p.wait_ready)

    def keys_usable(process, md):
        def check():
            expect(process.stub is not None, f"{process.name} is not up")
            outcome = wait_for_keys(process, md)
            expect(outcome.ok, f"a good instance token was never accepted within {KEYS_TIMEOUT:.0f}s: last {outcome!r}")

        return check

    s.check("startup.main.gitlab_oidc_keys_usable", keys_usable(w.main, w.good_md()))

    def discovery_used(issuer):
        def check():
            seen = list(issuer.requests)
            for path in ("/.well-known/openid-configuration", "/oauth/discovery/keys"):
                expect(path in seen, f"{issuer.name} never received GET {path} (saw {seen})")

        return check

    s.check("startup.gitlab_discovery_and_jwks_fetched", discovery_used(w.gitlab))
    s.check("startup.customersdot_discovery_and_jwks_fetched", discovery_used(w.customers_dot))
    custom = mint(w.gitlab_new, iss=w.gitlab.base, aud=CUSTOM_SERVICE_NAME, scopes=(EXECUTE,))
    s.check("startup.no_upstream.gitlab_oidc_keys_usable", keys_usable(w.no_upstream, metadata(custom)))


def scenarios_authorization_header(s: Suite, w: World) -> None:
    stub = w.main.stub
    token = w.ijwt()

    s.check(
        "authn.no_authorization.generate_token",
        lambda: expect_status(generate_token(stub, metadata(None)), UNAUTHENTICATED, NO_AUTHORIZATION),
    )
    s.check(
        "authn.no_authorization.execute_workflow",
        lambda: expect_status(execute_workflow(stub, metadata(None)), UNAUTHENTICATED, NO_AUTHORIZATION),
    )
    s.check(
        "authn.no_authorization_precedes_type_check",
        lambda: expect_status(
            generate_token(stub, metadata(None, auth_type=None)), UNAUTHENTICATED, NO_AUTHORIZATION
        ),
    )
    bad_values = {
        "token_scheme": f"Token {token}",
        "basic_scheme": "Basic dXNlcjpwYXNzd29yZA==",
        "two_spaces": f"Bearer  {token}",
        "scheme_only": "Bearer",
        "no_space": f"Bearer{token}",
        "three_parts": f"Bearer {token} extra",
    }
    for label, value in bad_values.items():
        s.check(
            f"authn.invalid_authorization.{label}",
            lambda value=value: expect_status(
                generate_token(stub, metadata(authorization=value)), UNAUTHENTICATED, INVALID_AUTHORIZATION
            ),
        )
    s.check(
        "authn.invalid_authorization.execute_workflow",
        lambda: expect_status(
            execute_workflow(stub, metadata(authorization=f"Token {token}")), UNAUTHENTICATED, INVALID_AUTHORIZATION
        ),
    )
    s.check(
        "authn.invalid_authorization_precedes_type_check",
        lambda: expect_status(
            generate_token(stub, metadata(authorization=f"Token {token}", auth_type=None)),
            UNAUTHENTICATED,
            INVALID_AUTHORIZATION,
        ),
    )
    for scheme in ("bearer", "BEARER", "bEaReR"):
        s.check(
            f"authn.scheme_case_insensitive.{scheme}",
            lambda scheme=scheme: expect_ok(generate_token(stub, metadata(w.ijwt(), scheme=scheme))),
        )

    # Step 3: only OIDC.
    for label, value in {"missing": None, "empty": "", "basic": "basic", "jwt": "jwt"}.items():
        s.check(
            f"authn.authentication_type.{label}",
            lambda value=value: expect_status(
                generate_token(stub, metadata(w.ijwt(), auth_type=value)), UNAUTHENTICATED, INVALID_TYPE
            ),
        )
    s.check(
        "authn.authentication_type.execute_workflow",
        lambda: expect_status(execute_workflow(stub, metadata(w.ijwt(), auth_type=None)), UNAUTHENTICATED, INVALID_TYPE),
    )
    s.check(
        "authn.type_check_precedes_verification",
        lambda: expect_status(generate_token(stub, metadata("not.a.token", auth_type="jwt")), UNAUTHENTICATED, INVALID_TYPE),
    )


def scenarios_verification(s: Suite, w: World) -> None:
    stub = w.main.stub
    gl = w.gitlab.base

    def forbidden(token, rpc="generate"):
        def check():
            md = metadata(token)
            outcome = generate_token(stub, md) if rpc == "generate" else execute_workflow(stub, md)
            expect_status(outcome, UNAUTHENTICATED, FORBIDDEN)

        return check

    def accepted(token, **md_kw):
        return lambda: expect_ok(generate_token(stub, metadata(token, **md_kw)))

    # Accepted shapes of instance tokens.
    s.check("verify.accept.kidless_current_key", accepted(w.ijwt()))
    s.check("verify.accept.kidless_other_published_key", accepted(mint(w.gitlab_old, iss=gl, scopes=(GENERATE,))))
    s.check("verify.accept.with_kid", accepted(w.ijwt(with_kid=True)))
    s.check("verify.accept.with_kid_other_key", accepted(mint(w.gitlab_old, iss=gl, with_kid=True)))
    s.check("verify.accept.audience_array", accepted(w.ijwt(aud=["some-other-service", SERVICE_NAME])))
    s.check(
        "verify.accept.customersdot_self_managed",
        accepted(mint(w.cdot, iss=w.customers_dot.base, realm="self-managed", scopes=(EXECUTE,)), realm="self-managed"),
    )
    s.check("verify.accept.within_leeway_expired_10s_ago", accepted(w.ijwt(iat_offset=-3610)))

    # Rejected: all "Forbidden by auth provider".
    tampered = w.ijwt(scopes=(EXECUTE,))
    head, body, sig = tampered.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["scopes"] = [EXECUTE, GENERATE, "admin"]
    tampered = ".".join([head, b64url(json.dumps(claims).encode()), sig])
    s.check("verify.reject.bad_signature_rogue_key", forbidden(mint(w.rogue, iss=gl)))
    s.check("verify.reject.bad_signature_rogue_key_known_kid", forbidden(jwt.encode(
        ijwt_claims(gl), w.rogue.private, algorithm="RS256", headers={"kid": w.gitlab_new.kid})))
    s.check("verify.reject.tampered_claims", forbidden(tampered))
    s.check("verify.reject.expired", forbidden(w.ijwt(iat_offset=-7200)))
    s.check("verify.reject.expired.execute_workflow", forbidden(w.ijwt(iat_offset=-7200), rpc="execute"))
    s.check("verify.reject.not_yet_valid", forbidden(w.ijwt(nbf_offset=3600)))
    s.check("verify.reject.missing_exp", forbidden(w.ijwt(omit=("exp",))))
    s.check("verify.reject.wrong_audience", forbidden(w.ijwt(aud="gitlab-ai-gateway")))
    s.check("verify.reject.wrong_audience_array", forbidden(w.ijwt(aud=["gitlab-ai-gateway"])))
    s.check("verify.reject.missing_audience", forbidden(w.ijwt(omit=("aud",))))
    s.check("verify.reject.unknown_issuer", forbidden(w.ijwt(iss="https://gitlab.example.com")))
    s.check("verify.reject.issuer_trailing_slash", forbidden(w.ijwt(iss=gl + "/")))
    s.check("verify.reject.missing_issuer", forbidden(w.ijwt(omit=("iss",))))
    s.check(
        "verify.reject.customersdot_key_claiming_gitlab",
        forbidden(mint(w.cdot, iss=gl)),
    )
    s.check(
        "verify.reject.gitlab_key_claiming_service_issuer",
        forbidden(mint(w.gitlab_new, iss=SERVICE_NAME, sub=USER_ID)),
    )
    none_token = handmade_jws({"alg": "none", "typ": "JWT"}, ijwt_claims(gl), lambda _: b"")
    s.check("verify.reject.alg_none", forbidden(none_token))
    s.check(
        "verify.reject.alg_none_uppercase",
        forbidden(handmade_jws({"alg": "None", "typ": "JWT"}, ijwt_claims(gl), lambda _: b"")),
    )
    public_pem = w.gitlab_new.public_pem()

    def hs256(data):
        return hmac.new(public_pem, data, hashlib.sha256).digest()

    s.check(
        "verify.reject.hs256_public_key_as_secret",
        forbidden(handmade_jws({"alg": "HS256", "typ": "JWT"}, ijwt_claims(gl), hs256)),
    )
    s.check(
        "verify.reject.hs256_public_key_as_secret_with_kid",
        forbidden(handmade_jws({"alg": "HS256", "typ": "JWT", "kid": w.gitlab_new.kid}, ijwt_claims(gl), hs256)),
    )
    s.check("verify.reject.garbage", forbidden("not-a-jwt"))
    s.check("verify.reject.three_garbage_segments", forbidden("a.b.c"))
    s.check("verify.reject.unsigned_two_segments", forbidden(none_token.rstrip(".")))


def scenarios_header_binding(s: Suite, w: World) -> None:
    stub = w.main.stub

    def mismatch(md, header):
        return lambda: expect_status(generate_token(stub, md), UNAUTHENTICATED, f"Header mismatch '{header}'")

    s.check("binding.realm_mismatch", mismatch(w.good_md(realm="self-managed"), "X-Gitlab-Realm"))
    s.check("binding.realm_header_missing", mismatch(w.good_md(realm=None), "X-Gitlab-Realm"))
    s.check(
        "binding.realm_mismatch.execute_workflow",
        lambda: expect_status(
            execute_workflow(stub, w.good_md(realm="self-managed")), UNAUTHENTICATED, "Header mismatch 'X-Gitlab-Realm'"
        ),
    )
    s.check("binding.instance_id_mismatch", mismatch(w.good_md(instance_id="another-instance"), "X-Gitlab-Instance-Id"))
    s.check("binding.instance_id_header_missing", mismatch(w.good_md(instance_id=None), "X-Gitlab-Instance-Id"))
    s.check(
        "binding.ijwt_sub_bound_to_instance_id",
        mismatch(
            metadata(w.ijwt(omit=("gitlab_instance_id",), sub="instance-from-sub"), instance_id="instance-from-header"),
            "X-Gitlab-Instance-Id",
        ),
    )
    s.check(
        "binding.absent_claims_bind_nothing",
        lambda: expect_ok(
            generate_token(
                stub,
                metadata(
                    w.ijwt(omit=("gitlab_realm", "gitlab_instance_id", "sub")),
                    realm="self-managed",
                    instance_id="whatever-instance",
                ),
            )
        ),
    )
    s.check(
        "binding.seat_count_mismatch_only_logged",
        lambda: expect_ok(generate_token(stub, metadata(w.ijwt(seat_count="17"), seat_count="3"))),
    )
    s.check(
        "binding.ijwt_global_user_id_not_bound",
        lambda: expect_ok(generate_token(stub, w.good_md(user_id="some-other-user"))),
    )
    user_token = mint_user_token(w.signing)
    s.check(
        "binding.user_token_global_user_id_mismatch",
        lambda: expect_status(
            execute_workflow(stub, metadata(user_token, user_id="888")),
            UNAUTHENTICATED,
            "Header mismatch 'X-Gitlab-Global-User-Id'",
        ),
    )
    s.check(
        "binding.user_token_global_user_id_missing",
        lambda: expect_status(
            execute_workflow(stub, metadata(user_token, user_id=None)),
            UNAUTHENTICATED,
            "Header mismatch 'X-Gitlab-Global-User-Id'",
        ),
    )
    s.check(
        "binding.user_token_realm_mismatch",
        lambda: expect_status(
            execute_workflow(stub, metadata(user_token, realm="self-managed")),
            UNAUTHENTICATED,
            "Header mismatch 'X-Gitlab-Realm'",
        ),
    )


def scenarios_authorization(s: Suite, w: World) -> None:
    stub = w.main.stub
    denied_execute = "Unauthorized to execute workflow"
    denied_generate = "Unauthorized to generate token"

    s.check(
        "authz.execute_without_execute_scope",
        lambda: expect_status(
            execute_workflow(stub, metadata(w.ijwt(scopes=(GENERATE,)))), PERMISSION_DENIED, denied_execute
        ),
    )
    s.check(
        "authz.execute_with_no_scopes_claim",
        lambda: expect_status(
            execute_workflow(stub, metadata(w.ijwt(scopes=OMIT))), PERMISSION_DENIED, denied_execute
        ),
    )
    s.check(
        "authz.generate_without_either_scope",
        lambda: expect_status(
            generate_token(stub, metadata(w.ijwt(scopes=("include_file_context", "duo_chat")))),
            PERMISSION_DENIED,
            denied_generate,
        ),
    )
    s.check(
        "authz.generate_with_empty_scopes",
        lambda: expect_status(generate_token(stub, metadata(w.ijwt(scopes=()))), PERMISSION_DENIED, denied_generate),
    )
    s.check(
        "authz.generate_with_user_token",
        lambda: expect_status(
            generate_token(stub, metadata(mint_user_token(w.signing))), PERMISSION_DENIED, denied_generate
        ),
    )
    s.check(
        "authz.generate_with_user_token_of_validation_key",
        lambda: expect_status(
            generate_token(stub, metadata(mint_user_token(w.validation, scopes=(EXECUTE, GENERATE)))),
            PERMISSION_DENIED,
            denied_generate,
        ),
    )


def scenarios_generate_token(s: Suite, w: World) -> dict:
    """GenerateToken successes; returns a user token for the workflow scenarios."""
    stub = w.main.stub
    minted = {}

    def succeeds(label, ijwt, *, seat_claim=OMIT, md_kw=None, request=None):
        def check():
            md_kw_ = md_kw or {}
            before = int(time.time())
            outcome = generate_token(stub, metadata(ijwt, **md_kw_), request)
            after = int(time.time())
            expect_ok(outcome)
            response = outcome.value
            header, claims = decode_user_token(response.token, w.signing)
            expect_equal("header alg", header.get("alg"), "RS256")
            expect_equal("header typ", header.get("typ"), "JWT")
            expect(isinstance(header.get("kid"), str) and header["kid"] != "", f"header kid missing: {header}")
            expect_equal("iss", claims["iss"], SERVICE_NAME)
            aud = claims["aud"]
            expect(aud == SERVICE_NAME or aud == [SERVICE_NAME], f"aud: expected {SERVICE_NAME!r}, got {aud!r}")
            expect_equal("sub", claims["sub"], md_kw_.get("user_id", USER_ID))
            expect(before - 2 <= claims["iat"] <= after + 2, f"iat {claims['iat']} not now ({before}..{after})")
            expect_equal("nbf", claims["nbf"], claims["iat"])
            expect_equal("exp", claims["exp"], claims["iat"] + 3600)
            expect_equal("expiresAt", response.expiresAt, claims["exp"])
            try:
                uuid.UUID(claims["jti"])
            except (ValueError, TypeError, AttributeError):
                raise Failure(f"jti is not a UUID: {claims['jti']!r}")
            expect_equal("gitlab_realm", claims.get("gitlab_realm"), md_kw_.get("realm", REALM))
            expect_equal("gitlab_instance_id", claims.get("gitlab_instance_id"), md_kw_.get("instance_id", INSTANCE_ID))
            expect_equal("scopes", claims.get("scopes"), [EXECUTE])
            if seat_claim is OMIT:
                expect("duo_seat_count" not in claims, f"unexpected duo_seat_count {claims.get('duo_seat_count')!r}")
            else:
                got = claims.get("duo_seat_count")
                expect(got is not None and str(got) == str(seat_claim), f"duo_seat_count: expected {seat_claim!r}, got {got!r}")
            minted[label] = response.token

        return check

    s.check("generate.with_generate_scope", succeeds("generate", w.ijwt(scopes=(GENERATE,))))
    s.check("generate.with_execute_scope", succeeds("execute", w.ijwt(scopes=(EXECUTE,))))
    s.check(
        "generate.with_many_scopes_delegates_execute_only",
        succeeds("many", w.ijwt(scopes=(GENERATE, EXECUTE, "include_file_context", "duo_chat"))),
    )
    s.check("generate.seat_count_string_carried", succeeds("seat_str", w.ijwt(seat_count="17"), seat_claim="17"))
    s.check("generate.seat_count_number_carried", succeeds("seat_num", w.ijwt(seat_count=5), seat_claim=5))
    s.check(
        "generate.with_workflow_definition",
        succeeds("definition", w.ijwt(), request=pb.GenerateTokenRequest(workflowDefinition="chat")),
    )
    s.check(
        "generate.customersdot_self_managed",
        succeeds(
            "cdot",
            mint(w.cdot, iss=w.customers_dot.base, realm="self-managed", scopes=(GENERATE,)),
            md_kw={"realm": "self-managed", "user_id": "4242"},
        ),
    )
    s.check(
        "generate.missing_global_user_id",
        lambda: expect_status(generate_token(stub, w.good_md(user_id=None)), grpc.StatusCode.INVALID_ARGUMENT),
    )
    s.check(
        "generate.empty_global_user_id",
        lambda: expect_status(generate_token(stub, w.good_md(user_id="")), grpc.StatusCode.INVALID_ARGUMENT),
    )

    def distinct_jti():
        a = generate_token(stub, w.good_md())
        b = generate_token(stub, w.good_md())
        expect_ok(a)
        expect_ok(b)
        ja = jwt.decode(a.value.token, options={"verify_signature": False})["jti"]
        jb = jwt.decode(b.value.token, options={"verify_signature": False})["jti"]
        expect(ja != jb, "two tokens share a jti")

    s.check("generate.jti_unique", distinct_jti)
    return minted


def check_relay(w: World, stub, md):
    """ExecuteWorkflow reaches the executor with the start request and metadata; actions come back."""
    workflow_id = str(uuid.uuid4())
    goal = f"interop goal {workflow_id[:8]}"
    outcome = execute_workflow(stub, md, goal=goal, workflow_id=workflow_id)
    expect_ok(outcome)
    expect_equal("actions", list(outcome.value), expected_actions())
    record = w.executor.call_for(workflow_id)
    expect(record is not None, "the executor never saw the stream")
    expect(record["start"] is not None, "the executor's first event was not a startRequest")
    expect_equal("goal seen upstream", record["start"].goal, goal)
    expect_equal("clientVersion seen upstream", record["start"].clientVersion, "interop-1.0")
    expect_equal("clientCapabilities seen upstream", list(record["start"].clientCapabilities), ["shell_command"])
    received = {}
    for k, v in record["metadata"]:
        received.setdefault(k, v)
    for key, value in md:
        expect_equal(f"upstream metadata {key}", received.get(key), value)
    return record


def scenarios_workflow(s: Suite, w: World, minted: dict) -> None:
    stub = w.main.stub
    user_token = minted.get("execute") or minted.get("generate")

    def with_user_token():
        expect(user_token is not None, "no user token from GenerateToken (see generate.* failures)")
        check_relay(w, stub, metadata(user_token, request_id=f"interop-{uuid.uuid4()}"))

    s.check("workflow.user_token_relayed_with_metadata", with_user_token)

    def lowercase_bearer():
        expect(user_token is not None, "no user token from GenerateToken")
        check_relay(w, stub, metadata(user_token, scheme="bearer", request_id="interop-lower"))

    s.check("workflow.user_token_lowercase_bearer", lowercase_bearer)

    def generated_request_id():
        expect(user_token is not None, "no user token from GenerateToken")
        record = check_relay(w, stub, metadata(user_token))
        ids = [v for k, v in record["metadata"] if k == "x-request-id"]
        expect(len(ids) == 1 and ids[0] != "", f"upstream x-request-id: expected one generated id, got {ids!r}")

    s.check("workflow.request_id_generated_when_absent", generated_request_id)

    s.check(
        "workflow.instance_token_with_execute_scope",
        lambda: check_relay(w, stub, metadata(w.ijwt(scopes=(EXECUTE,)), request_id="interop-ijwt")),
    )
    s.check(
        "workflow.validation_key_user_token_accepted",
        lambda: check_relay(w, stub, metadata(mint_user_token(w.validation), request_id="interop-validation")),
    )
    s.check(
        "workflow.signing_key_user_token_made_here_accepted",
        lambda: check_relay(w, stub, metadata(mint_user_token(w.signing), request_id="interop-signing")),
    )
    s.check(
        "workflow.unrelated_key_user_token_refused",
        lambda: expect_status(execute_workflow(stub, metadata(mint_user_token(w.rogue))), UNAUTHENTICATED, FORBIDDEN),
    )
    s.check(
        "workflow.expired_user_token_refused",
        lambda: expect_status(
            execute_workflow(stub, metadata(mint_user_token(w.signing, iat_offset=-7200))), UNAUTHENTICATED, FORBIDDEN
        ),
    )
    s.check(
        "workflow.user_token_wrong_audience_refused",
        lambda: expect_status(
            execute_workflow(stub, metadata(mint(w.signing, iss=SERVICE_NAME, aud="gitlab-ai-gateway", sub=USER_ID))),
            UNAUTHENTICATED,
            FORBIDDEN,
        ),
    )

    def roundtrip():
        expect(user_token is not None, "no user token from GenerateToken")

        def respond(action):
            return pb.ClientEvent(actionResponse=pb.ActionResponse(requestID=action.requestID, response="file contents"))

        outcome = execute_workflow(stub, metadata(user_token), goal="roundtrip", respond=respond)
        expect_ok(outcome)
        expect_equal("actions", len(outcome.value), 2)
        expect_equal("echoed response", list(outcome.value[1].runCommand.arguments), ["file contents"])

    s.check("workflow.bidirectional_roundtrip", roundtrip)

    def upstream_abort():
        outcome = execute_workflow(stub, metadata(w.ijwt(scopes=(EXECUTE,))), goal="abort")
        expect_status(outcome, Executor.ABORT_CODE, Executor.ABORT_DETAILS)
        expect_equal("actions before abort", len(outcome.value), 0)

    s.check("workflow.upstream_abort_status_relayed", upstream_abort)

    def upstream_late_abort():
        outcome = execute_workflow(stub, metadata(w.ijwt(scopes=(EXECUTE,))), goal="abort-after-action")
        expect_status(outcome, Executor.LATE_ABORT_CODE, Executor.LATE_ABORT_DETAILS)
        expect_equal("actions before abort", list(outcome.value), expected_actions()[:1])

    s.check("workflow.upstream_abort_after_action_relayed", upstream_late_abort)


def scenarios_debug_mode(s: Suite, w: World) -> None:
    stub = w.debug.stub

    def execute_without_auth():
        expect(stub is not None, "debug service is not up")
        md = (("x-gitlab-global-user-id", USER_ID), ("x-request-id", "interop-debug"))
        check_relay(w, stub, md)

    s.check("debug.execute_workflow_without_authorization", execute_without_auth)

    def generate_without_auth():
        expect(stub is not None, "debug service is not up")
        outcome = generate_token(stub, (("x-gitlab-global-user-id", "999"), ("x-gitlab-realm", REALM)))
        expect_ok(outcome)
        _, claims = decode_user_token(outcome.value.token, w.signing)
        expect_equal("sub", claims["sub"], "999")
        expect_equal("expiresAt", outcome.value.expiresAt, claims["exp"])

    s.check("debug.generate_token_without_authorization", generate_without_auth)
    s.check(
        "debug.garbage_authorization_passes",
        lambda: expect_ok(generate_token(stub, metadata(authorization="Token nonsense", auth_type=None))),
    )
    s.check(
        "debug.generate_token_without_user_id",
        lambda: expect_status(generate_token(stub, ()), grpc.StatusCode.INVALID_ARGUMENT),
    )


def scenarios_no_upstream(s: Suite, w: World) -> None:
    stub = w.no_upstream.stub

    def custom_ijwt(**kw):
        kw.setdefault("scopes", (EXECUTE, GENERATE))
        kw.setdefault("aud", CUSTOM_SERVICE_NAME)
        return mint(w.gitlab_new, iss=w.gitlab.base, **kw)

    s.check(
        "no_upstream.authorized_execute_unimplemented",
        lambda: expect_status(
            execute_workflow(stub, metadata(custom_ijwt())), grpc.StatusCode.UNIMPLEMENTED, "No workflow executor configured"
        ),
    )
    s.check(
        "no_upstream.unauthenticated_execute",
        lambda: expect_status(execute_workflow(stub, metadata(None)), UNAUTHENTICATED, NO_AUTHORIZATION),
    )
    s.check(
        "no_upstream.forbidden_execute",
        lambda: expect_status(execute_workflow(stub, metadata(custom_ijwt(aud=SERVICE_NAME))), UNAUTHENTICATED, FORBIDDEN),
    )
    s.check(
        "no_upstream.unauthorized_execute",
        lambda: expect_status(
            execute_workflow(stub, metadata(custom_ijwt(scopes=(GENERATE,)))),
            PERMISSION_DENIED,
            "Unauthorized to execute workflow",
        ),
    )

    def custom_name_user_token():
        outcome = generate_token(stub, metadata(custom_ijwt()))
        expect_ok(outcome)
        _, claims = decode_user_token(outcome.value.token, w.signing, service=CUSTOM_SERVICE_NAME)
        expect_equal("iss", claims["iss"], CUSTOM_SERVICE_NAME)
        # ... and the service accepts it back (UNIMPLEMENTED = authenticated and authorized).
        expect_status(
            execute_workflow(stub, metadata(outcome.value.token)),
            grpc.StatusCode.UNIMPLEMENTED,
            "No workflow executor configured",
        )

    s.check("no_upstream.custom_service_name_user_token", custom_name_user_token)
    s.check(
        "no_upstream.disabled_customersdot_refused",
        lambda: expect_status(
            generate_token(
                stub,
                metadata(
                    mint(w.cdot, iss=w.customers_dot.base, aud=CUSTOM_SERVICE_NAME, scopes=(GENERATE,)),
                ),
            ),
            UNAUTHENTICATED,
            FORBIDDEN,
        ),
    )


def scenarios_still_serving(s: Suite, w: World) -> None:
    for p in w.processes:
        s.check(f"final.{p.name}.process_alive", lambda p=p: expect(p.alive(), f"exited with {p.proc.returncode}"))
    s.check("final.main.good_generate_token", lambda: expect_ok(generate_token(w.main.stub, w.good_md())))
    s.check(
        "final.main.health_serving",
        lambda: expect_equal("health", (health(w.main.channel).value), "SERVING"),
    )


def scenarios_logs(s: Suite, w: World) -> None:
    """After the processes stopped: no token and no private key ever reached a log."""
    secrets = [w.signing.pem_pkcs1(), w.validation.pem_pkcs8()]
    secret_lines = [line for pem in secrets for line in pem.splitlines() if not line.startswith("-----")]

    for p in w.processes:
        def check(p=p):
            text = p.log_text()
            expect(text != "", "the log is empty")
            for token in SEEN_TOKENS:
                parts = token.split(".")
                needles = [n for n in [token] + parts[1:] if len(n) >= 16]
                for needle in needles:
                    expect(needle not in text, f"a token (or its payload/signature) is in the log: {needle[:24]}...")
            for line in secret_lines:
                expect(line not in text, "private key material is in the log")

        s.check(f"logs.{p.name}.no_tokens_or_keys", check)


# --------------------------------------------------------------------------------------------


def main(argv) -> int:
    binary = Path(argv[1] if len(argv) > 1 else "target/debug/duo-workflow-service")
    if not binary.is_absolute():
        binary = binary if binary.exists() else REPO / binary
    suite = Suite()
    if not binary.exists():
        suite.fail("setup.binary", f"{binary} does not exist (cargo build -p duo-workflow-service)")
        print(f"{suite.passed} passed, {suite.failed} failed")
        return 1

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dws-interop-") as tmp:
        tmp = Path(tmp)
        stubs = tmp / "stubs"
        stubs.mkdir()
        load_stubs(stubs)
        world = None
        try:
            world = World(str(binary.resolve()), tmp)
            scenarios_readiness(suite, world)
            if all(p.stub is not None for p in world.processes):
                scenarios_authorization_header(suite, world)
                scenarios_verification(suite, world)
                scenarios_header_binding(suite, world)
                scenarios_authorization(suite, world)
                minted = scenarios_generate_token(suite, world)
                scenarios_workflow(suite, world, minted)
                scenarios_debug_mode(suite, world)
                scenarios_no_upstream(suite, world)
                scenarios_still_serving(suite, world)
        except Exception as e:
            suite.fail("setup", f"{type(e).__name__}: {e}")
        finally:
            if world is not None:
                world.stop()
                scenarios_logs(suite, world)
                if suite.failed:
                    for p in world.processes:
                        for line in p.log_text().splitlines()[-6:]:
                            print(f"# {p.name} | {line}", flush=True)
    print(f"# {time.monotonic() - started:.1f}s", flush=True)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 0 if suite.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
