#!/usr/bin/env python3
"""Interoperability suite for the Duo Workflow Service auth core (SPEC.md, Parts A, B and C).

Everything the service talks to is played here, in Python, the way GitLab's own components do it:

* two OIDC issuers ("GitLab" and "CustomersDot") serving a discovery document and a JWKS,
* instance tokens minted with PyJWT like GitLab Rails mints them (RS256, no `kid`),
* workflow executors speaking GitLab's 2026 DuoWorkflow contract (all seven RPCs) with grpcio,
  from stubs generated at run time from `proto/contract.proto`,
* grpcio clients checking exact status codes and `details()` strings.

Three service processes run: the main one (auth on, upstream configured), a debug one (auth off)
and one without an upstream (custom service name, CustomersDot disabled). More processes, each with
its own mutable GitLab provider, play the key-source scenarios of SPEC Part B: the published keys
(PyJWKClient), rotation without restart, a random-kid flood, provider outages, start-up with the
provider down, a discovery document naming another issuer and an empty provider URL.

Then contract_test.py drives the 2026 contract (SPEC Part C) through processes of its own, to an
executor that works on raw message bytes: the authorization table of C2 with its `details`, the
user token and `server_capabilities` of C3, and the relay of C4 (every message variant and unknown
fields byte-identical both ways, metadata, headers, trailers and rich statuses, deadlines,
cancellation, the 4 MiB limit, an unreachable executor), health, reflection and unknown methods.

Then the hostile-input battery of hostile_test.py runs against a process of its own,
deploy_test.py checks the deployment files (deploy/Dockerfile, deploy/kubernetes/) against the code
and starts the binary with the Kubernetes configuration, and rotation_test.py rotates the local
authority's key across three replicas one at a time (SIGHUP and the poll, RSA to Ed25519) while a
client mints and uses user tokens across them: no good call may be refused. Last, providers_test.py
puts four real OpenID providers (panva's oidc-provider on Node, shaped like Keycloak, Okta, Auth0 and
Azure AD) in front of one process configured for them by TOML alone.

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
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import struct_pb2
from grpc_tools import protoc

import contract_test  # noqa: E402 (interop/contract_test.py, beside this file)
import hostile_test  # noqa: E402 (interop/hostile_test.py, beside this file)
import deploy_test  # noqa: E402 (interop/deploy_test.py, beside this file)
import rotation_test  # noqa: E402 (interop/rotation_test.py, beside this file)
import providers_test  # noqa: E402 (interop/providers_test.py, beside this file)

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
    kid=None,
    iat_offset=0,
    lifetime=3600,
    nbf_offset=-5,
    omit=(),
    extra=None,
) -> str:
    """A token like GitLab Rails mints (RS256, no kid unless asked: `with_kid` puts the key's kid,
    `kid` any kid). Pass OMIT to leave a claim out; `extra` adds claims."""
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
    claims.update(extra or {})
    claims = {k: v for k, v in claims.items() if v is not OMIT and k not in omit}
    headers = {"kid": kid} if kid is not None else ({"kid": key.kid} if with_kid else None)
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


def generate_token(stub, md, request=None, timeout=RPC_TIMEOUT) -> Outcome:
    try:
        response = stub.GenerateToken(request or pb.GenerateTokenRequest(), metadata=md, timeout=timeout)
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
    """An OIDC issuer like GitLab: discovery document and JWKS over plain HTTP on loopback.

    Its state is mutable, for rotation and outage scenarios: `set_keys` swaps the published key
    set; `set_mode` makes it answer "ok", "500" (both documents), "garbage" (a 200 JWKS that is not
    JSON) or "hang" (both documents stall until released or HANG_SECONDS pass, then 503).
    `count(path)` is how many GETs of `path` it served. `discovery_issuer(base)` overrides the
    `issuer` its discovery document states."""

    DISCOVERY = "/.well-known/openid-configuration"
    JWKS = "/oauth/discovery/keys"
    HANG_SECONDS = 12.0  # longer than the service's 10 s fetch timeout

    def __init__(self, name: str, keys, *, port: int = 0, discovery_issuer=None):
        self.name = name
        self.lock = threading.Lock()
        self.keys = list(keys)
        self.mode = "ok"
        self.release = threading.Event()
        self.discovery_issuer = discovery_issuer
        self.requests = []
        self.counts = {}
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                with issuer.lock:
                    issuer.requests.append(self.path)
                    issuer.counts[self.path] = issuer.counts.get(self.path, 0) + 1
                    mode = issuer.mode
                    keys = list(issuer.keys)
                known = self.path in (OidcIssuer.DISCOVERY, OidcIssuer.JWKS)
                try:
                    if known and mode == "hang":
                        issuer.release.wait(OidcIssuer.HANG_SECONDS)
                        self.send_error(503)
                    elif known and mode == "500":
                        self.send_error(500)
                    elif self.path == OidcIssuer.DISCOVERY:
                        self.reply(json.dumps(issuer.discovery()).encode(), "max-age=86400")
                    elif self.path == OidcIssuer.JWKS and mode == "garbage":
                        self.reply(b"<html><body>502 Bad Gateway</body></html>\x00{", "max-age=86400, public")
                    elif self.path == OidcIssuer.JWKS:
                        self.reply(json.dumps({"keys": [k.jwk() for k in keys]}).encode(), "max-age=86400, public")
                    else:
                        self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the service gave up waiting (hang mode)

            def reply(self, body, cache_control):
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Cache-Control", cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"oidc-{name}", daemon=True)
        self.thread.start()

    def set_keys(self, keys) -> None:
        with self.lock:
            self.keys = list(keys)

    def set_mode(self, mode: str) -> None:
        with self.lock:
            self.mode = mode
        if mode == "hang":
            self.release.clear()
        else:
            self.release.set()

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts.get(path, 0)

    def jwks_gets(self) -> int:
        return self.count(OidcIssuer.JWKS)

    def discovery_gets(self) -> int:
        return self.count(OidcIssuer.DISCOVERY)

    def discovery(self) -> dict:
        b = self.base
        return {
            "issuer": self.discovery_issuer(b) if self.discovery_issuer else b,
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
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------------------------
# The upstream workflow executor
# --------------------------------------------------------------------------------------------


class Executor:
    """A workflow executor speaking the 2026 DuoWorkflow contract with the generated stubs: all
    seven RPCs. It records each ExecuteWorkflow stream's metadata and first event.

    ExecuteWorkflow's behaviour by goal: "abort" aborts before any action; "abort-after-action"
    sends one action then aborts; "roundtrip" sends one action, reads the client's answer
    (`actionResponse.plainTextResponse`) and echoes it in a second action; anything else sends
    two actions and ends. The other RPCs answer fixed 2026 messages (GenerateToken too, though the
    service never relays it: a token from here would show that it did)."""

    ABORT_CODE = grpc.StatusCode.FAILED_PRECONDITION
    ABORT_DETAILS = "upstream refused the workflow: interop abort"
    LATE_ABORT_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED
    LATE_ABORT_DETAILS = "upstream ran out of budget"
    CAPABILITIES = ["tool_call_approval", "tool_call_pattern_approval", "flow_semantic_versioning"]

    def __init__(self):
        self.calls = {}  # workflowID -> {"metadata": [(k, v)], "start": StartWorkflowRequest}
        self.methods = []  # every method called, in order
        self.lock = threading.Lock()
        executor = self

        def seen(name):
            with executor.lock:
                executor.methods.append(name)

        class Servicer(pb_grpc.DuoWorkflowServicer):
            def ExecuteWorkflow(self, request_iterator, context):  # noqa: N802
                seen("ExecuteWorkflow")
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
                    text = "<none>"
                    if answer is not None and answer.actionResponse.HasField("plainTextResponse"):
                        text = answer.actionResponse.plainTextResponse.response
                    yield pb.Action(requestID="2", runCommand=pb.RunCommandAction(program="echo", arguments=[text]))
                    return
                yield pb.Action(
                    requestID="2",
                    runCommand=pb.RunCommandAction(program="ls", arguments=["-la"], flags=["--color=never"]),
                )

            def GenerateToken(self, request, context):  # noqa: N802
                seen("GenerateToken")
                return pb.GenerateTokenResponse(token="minted-by-the-executor", expiresAt=1)

            def ListCapabilities(self, request, context):  # noqa: N802
                seen("ListCapabilities")
                return pb.ListCapabilitiesResponse(capabilities=[pb.Capability(name=n) for n in Executor.CAPABILITIES])

            def ListTools(self, request, context):  # noqa: N802
                seen("ListTools")
                tool = struct_pb2.Struct()
                tool.update({"name": "read_file", "description": "Reads a file"})
                return pb.ListToolsResponse(tools=[tool])

            def ListFlows(self, request, context):  # noqa: N802
                seen("ListFlows")
                config = struct_pb2.Struct()
                config.update({"name": "developer", "version": "v1"})
                return pb.ListFlowsResponse(configs=[config])

            def TrackSelfHostedExecuteWorkflow(self, request_iterator, context):  # noqa: N802
                seen("TrackSelfHostedExecuteWorkflow")
                for event in request_iterator:
                    yield pb.TrackSelfHostedAction(requestID=event.requestID)

            def ValidateFlowConfig(self, request, context):  # noqa: N802
                seen("ValidateFlowConfig")
                return pb.ValidateFlowConfigResponse(valid=True)

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


def parse_serving(line: str):
    """grpc, published_keys and operator addresses of the start-up line (text or JSON logs)."""
    fields = {}
    for name in ("grpc", "published_keys", "operator"):
        m = re.search(rf'\b{name}=([^\s,]+)', line) or re.search(rf'"{name}"\s*:\s*"([^"]+)"', line)
        if m is None:
            return None
        fields[name] = m.group(1)
    return fields


def clean_environment() -> dict:
    """The parent's environment less anything that configures the service."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DUO_WORKFLOW_", "CLOUD_CONNECTOR_", "AIGW_", "PROMETHEUS_")) and k not in ("PORT",)
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    return env


# Every service process any module started, for the closing panic check.
ALL_PROCESSES = []


class ServiceProcess:
    def __init__(self, name: str, binary: str, settings: dict, log_dir: Path, listen="127.0.0.1", credentials=None,
                 config: Path = None):
        ALL_PROCESSES.append(self)
        self.name = name
        self.listen = listen  # the address to serve on, and to call
        self.credentials = credentials  # grpc.ssl_channel_credentials for a TLS process
        # Every listener on port 0 unless `settings` say otherwise: the ports are read from the
        # start-up line in wait_ready (a port picked here and bound later could be taken meanwhile).
        self.port = None
        self.http_port = None
        # The operator listener (/metrics, /key-sources): loopback, a port of its own.
        self.metrics_port = None
        env = clean_environment()
        env.update({"PORT": "0", "DUO_WORKFLOW_HTTP__PORT": "0", "PROMETHEUS_METRICS__PORT": "0"})
        env.update(settings)
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", listen] + (["--config", str(config)] if config else []),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.channel = None
        self.stub = None

    def wait_ready(self) -> None:
        """Until the start-up line names the ports, the port accepts and gRPC health answers (any
        status)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.port is None:
            line = next((l for l in self.log_text().splitlines() if "serving" in l), None)
            fields = parse_serving(line) if line else None
            if fields:
                port = lambda name: int(fields[name].rsplit(":", 1)[1])  # noqa: E731
                self.port, self.http_port, self.metrics_port = port("grpc"), port("published_keys"), port("operator")
                break
            if self.proc.poll() is not None:
                raise Failure(f"{self.name} exited with {self.proc.returncode}: {self.log_tail(5)}")
            if time.monotonic() > deadline:
                raise Failure(f"{self.name} logged no `serving` line within {STARTUP_TIMEOUT:.0f}s: {self.log_tail(5)}")
            time.sleep(0.05)
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"{self.name} exited with {self.proc.returncode}: {self.log_tail(5)}")
            if time.monotonic() > deadline:
                raise Failure(f"{self.name} did not answer within {STARTUP_TIMEOUT:.0f}s")
            try:
                with socket.create_connection((self.listen, self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        target = f"[{self.listen}]:{self.port}" if ":" in self.listen else f"{self.listen}:{self.port}"
        if self.credentials is None:
            self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", "localhost")]
            self.channel = grpc.secure_channel(target, self.credentials, options=options)
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




def h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_call_frames(port: int, header_block: bytes, body: bytes, timeout: float):
    """One request on stream 1 of a fresh HTTP/2 connection to 127.0.0.1:`port` (an HPACK
    `header_block`, then `body` as one DATA frame ending the stream), written by hand so that
    nothing is normalised on the way. Acknowledges the peer's SETTINGS and PINGs and yields what
    comes back: (kind, flags, payload) for the frames of stream 1 (HEADERS without padding and
    priority), ("GOAWAY", None, payload), or ("CLOSED", None, None) when the connection ends. A
    timeout is raised, not reported as a closed connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0, 0, b"")
                     + h2_frame(0x1, 0x4, 1, header_block) + h2_frame(0x0, 0x1, 1, body))
        buf = b""

        def read(n):
            nonlocal buf
            while len(buf) < n:
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
            data, buf = buf[:n], buf[n:]
            return data

        try:
            while True:
                head = read(9)
                length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = read(length)
                if kind == 0x4 and not flags & 0x1:
                    sock.sendall(h2_frame(0x4, 0x1, 0, b""))
                elif kind == 0x6 and not flags & 0x1:
                    sock.sendall(h2_frame(0x6, 0x1, 0, payload))
                elif kind == 0x7:
                    yield ("GOAWAY", None, payload)
                    return
                elif stream == 1:
                    if kind == 0x1:
                        pad = payload[0] if flags & 0x8 else 0
                        start = (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)
                        payload = payload[start:len(payload) - pad]
                    yield (kind, flags, payload)
        except (EOFError, ConnectionResetError):
            yield ("CLOSED", None, None)

def check_no_panics(s: "Suite") -> None:
    """A panic is a failure wherever it happened, even when every call a check made passed: one
    check per service process started, on its whole log."""
    s.deadline = max(s.deadline, time.monotonic() + 10.0)  # reading logs, whatever time is left
    for p in ALL_PROCESSES:
        def check(p=p):
            line = next((l for l in p.log_text().splitlines() if "panicked at" in l), None)
            expect(line is None, f"the process panicked: {line}")

        s.check(f"panics.{p.name}.none_in_log", check)


def run_alone(argv, run, prefix: str) -> int:
    """Runs one module's checks (`run(suite, h, binary, tmp)`) on their own: what
    `python interop/<module>.py BINARY` does (interop/run.sh runs them all as one suite)."""
    binary = Path(argv[1] if len(argv) > 1 else "target/debug/duo-workflow-service")
    binary = binary if binary.is_absolute() or binary.exists() else REPO / binary
    suite = Suite()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp = Path(tmp)
        (tmp / "stubs").mkdir()
        load_stubs(tmp / "stubs")
        run(suite, sys.modules[__name__], str(binary.resolve()), tmp)
        check_no_panics(suite)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 0 if suite.failed == 0 else 1


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

        self.core = list(self.processes)

        # Processes of the key-source scenarios (SPEC Part B 2-5): each has its own GitLab
        # provider, so that fetch counts and the per-issuer refetch rate limit are its alone.
        self.rot_a = Key("rotation-key-a")
        self.rot_b = Key("rotation-key-b")
        self.rot_c = Key("rotation-key-c")
        self.providers = {}
        self.extra = {}

        def provider(label, keys, **kw) -> OidcIssuer:
            self.providers[label] = OidcIssuer(f"gitlab-{label}", keys, **kw)
            return self.providers[label]

        def extra(name, gitlab_url, cdot_url):
            self.extra[name] = self.spawn(
                name,
                binary,
                log_dir,
                {
                    **common,
                    "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": gitlab_url,
                    "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": cdot_url,
                },
            )

        cdot_url = self.customers_dot.base
        extra("rotation-kid", provider("rotation-kid", [self.rot_a]).base, cdot_url)
        # Also the empty-CustomersDot-URL process.
        extra("rotation-kidless", provider("rotation-kidless", [self.rot_a]).base, "")
        extra("flood", provider("flood", [self.gitlab_old, self.gitlab_new]).base, cdot_url)
        for mode in ("500", "garbage", "hang"):
            extra(f"outage-{mode}", provider(f"outage-{mode}", [self.gitlab_new]).base, cdot_url)
        # GitLab's provider starts later, on this port (nothing listens there yet).
        self.down_port = free_port()
        self.down_base = f"http://127.0.0.1:{self.down_port}"
        self.down_provider = None
        extra("provider-down", self.down_base, cdot_url)
        # A discovery document naming another issuer (GitLab reached by an internal URL, naming its
        # external issuer) / its own with a trailing slash (CustomersDot).
        mismatch = provider("mismatch", [self.gitlab_new], discovery_issuer=lambda base: EXTERNAL_GITLAB)
        slash = provider("slash", [self.cdot], discovery_issuer=lambda base: base + "/")
        extra("issuer-mismatch", mismatch.base, slash.base)

    def spawn(self, name, binary, log_dir, settings, **kw) -> ServiceProcess:
        p = ServiceProcess(name, binary, settings, log_dir, **kw)
        self.processes.append(p)
        return p

    def stop(self):
        for p in self.processes:
            try:
                p.stop()
            except Exception as e:  # keep stopping the rest
                print(f"# could not stop {p.name}: {e}", flush=True)
        providers = list(self.providers.values()) + ([self.down_provider] if self.down_provider else [])
        for thing in [self.executor, self.gitlab, self.customers_dot] + providers:
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
    # SPEC C2: the flow is named (start_event() runs `software_development`).
    denied_execute = "Unauthorized to execute software_development"
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

    def succeeds(label, ijwt, *, seat_claim=OMIT, md_kw=None, request=None, scopes=(EXECUTE,)):
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
            expect_equal("scopes", sorted(claims.get("scopes") or []), sorted(scopes))
            if seat_claim is OMIT:
                expect("duo_seat_count" not in claims, f"unexpected duo_seat_count {claims.get('duo_seat_count')!r}")
            else:
                got = claims.get("duo_seat_count")
                expect(got is not None and str(got) == str(seat_claim), f"duo_seat_count: expected {seat_claim!r}, got {got!r}")
            minted[label] = response.token

        return check

    s.check("generate.with_generate_scope", succeeds("generate", w.ijwt(scopes=(GENERATE,))))
    s.check("generate.with_execute_scope", succeeds("execute", w.ijwt(scopes=(EXECUTE,))))
    # SPEC C3: the caller's scopes that are delegable (duo_workflow_generate_token is not; a 2024
    # caller holding only it gets duo_workflow_execute_workflow, as Part A says).
    s.check(
        "generate.with_many_scopes_delegates_the_delegable_ones",
        succeeds(
            "many",
            w.ijwt(scopes=(GENERATE, EXECUTE, "include_file_context", "duo_chat", "code_suggestions")),
            scopes=(EXECUTE, "include_file_context", "duo_chat"),
        ),
    )
    s.check("generate.seat_count_string_carried", succeeds("seat_str", w.ijwt(seat_count="17"), seat_claim="17"))
    s.check("generate.seat_count_number_carried", succeeds("seat_num", w.ijwt(seat_count=5), seat_claim=5))
    s.check(
        "generate.with_workflow_definition_chat",
        succeeds(
            "definition",
            w.ijwt(scopes=("duo_chat",)),
            request=pb.GenerateTokenRequest(workflowDefinition="chat"),
            scopes=("duo_chat",),
        ),
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
            return pb.ClientEvent(
                actionResponse=pb.ActionResponse(
                    requestID=action.requestID, plainTextResponse=pb.PlainTextResponse(response="file contents")
                )
            )

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
            "Unauthorized to execute software_development",
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


# --------------------------------------------------------------------------------------------
# Key sources (SPEC Part B): published keys, rotation, floods, outages, start-up, discovery
# --------------------------------------------------------------------------------------------

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
KEYS_UNAVAILABLE = "Keys of the token's issuer are not available"
EXTERNAL_GITLAB = "https://gitlab.example.com"  # the issuer a GitLab reached by an internal URL names
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
FAST = 1.0  # seconds: what "answers promptly" means here
RECOVERY_TIMEOUT = 15.0  # seconds from the provider's start to an accepted token
HANG_MISS_TIMEOUT = 9.0  # seconds a miss may take while the provider hangs (service waits ≤ 5 s)


def http_get(url: str, timeout=RPC_TIMEOUT):
    """GET without proxies: (status, headers, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.status, response.headers, response.read()


def timed(fn):
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


def wait_health(process: ServiceProcess, service: str, want: str, timeout: float) -> Outcome:
    """Polls gRPC health of `service` until it reports `want` or `timeout` passes; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = health(process.channel, service)
        if (outcome.ok and outcome.value == want) or time.monotonic() > deadline:
            return outcome
        time.sleep(0.1)


def expect_health(process: ServiceProcess, service: str, want: str, timeout: float = 0.0) -> None:
    expect(process.stub is not None, f"{process.name} is not up")
    outcome = wait_health(process, service, want, timeout)
    expect(outcome.ok and outcome.value == want, f"health {service!r}: expected {want}, got {outcome.value if outcome.ok else outcome!r}")


def expect_fast(what: str, seconds: float, limit: float = FAST) -> None:
    expect(seconds <= limit, f"{what} took {seconds * 1000:.0f} ms (limit {limit * 1000:.0f} ms)")


def source_ready(process: ServiceProcess, source="gitlab"):
    return lambda: expect_health(process, f"key-source/{source}", "SERVING", KEYS_TIMEOUT)


def cdot_md_token(w: World):
    token = mint(w.cdot, iss=w.customers_dot.base, realm="self-managed", scopes=(EXECUTE,))
    return metadata(token, realm="self-managed")


def scenarios_published_keys(s: Suite, w: World) -> None:
    """The local authority's discovery document and JWKS, used by PyJWT's PyJWKClient."""
    p = w.main
    base = f"http://127.0.0.1:{p.http_port}"
    state = {}

    def discovery():
        status, _, body = http_get(base + OidcIssuer.DISCOVERY)
        expect_equal("status", status, 200)
        doc = json.loads(body)
        expect_equal("issuer", doc.get("issuer"), SERVICE_NAME)
        expect_equal("jwks_uri", doc.get("jwks_uri"), base + OidcIssuer.JWKS)
        state["jwks_uri"] = doc["jwks_uri"]

    s.check("published.discovery_document", discovery)

    def jwks_uri():
        expect("jwks_uri" in state, "no jwks_uri from the discovery document (see published.discovery_document)")
        return state["jwks_uri"]

    def jwks():
        status, headers, body = http_get(jwks_uri())
        expect_equal("status", status, 200)
        directives = {d.strip().lower() for d in (headers.get("Cache-Control") or "").split(",") if d.strip()}
        expect_equal("Cache-Control directives", directives, {"public", "max-age=300"})
        keys = json.loads(body).get("keys")
        expect(isinstance(keys, list), f"no keys array: {body[:200]!r}")
        for k in keys:
            private = [m for m in PRIVATE_JWK_MEMBERS if m in k]
            expect(not private, f"key {k.get('kid')!r} publishes private members {private}")
            expect_equal("kty", k.get("kty"), "RSA")
            expect_equal("use", k.get("use"), "sig")
            expect_equal("alg", k.get("alg"), "RS256")
            expect(isinstance(k.get("kid"), str) and k["kid"], f"kid missing: {k}")
        by_n = {k.get("n"): k for k in keys}
        found = {}
        for label, key in (("signing", w.signing), ("validation", w.validation)):
            jwk = key.jwk()
            published = by_n.get(jwk["n"])
            expect(published is not None, f"the {label} key is not in the JWKS (kids {[k.get('kid') for k in keys]})")
            expect_equal(f"{label} e", published.get("e"), jwk["e"])
            found[label] = published["kid"]
        expect(found["signing"] != found["validation"], f"signing and validation share kid {found['signing']!r}")
        expect_equal("number of keys", len(keys), 2)
        state["kids"] = found

    s.check("published.jwks_signing_and_validation_keys_public_only", jwks)

    def pyjwkclient_user_token():
        outcome = generate_token(p.stub, w.good_md())
        expect_ok(outcome)
        token = outcome.value.token
        client = jwt.PyJWKClient(jwks_uri(), timeout=RPC_TIMEOUT, cache_jwk_set=False)
        signing_key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token, signing_key.key, algorithms=["RS256"], audience=SERVICE_NAME, issuer=SERVICE_NAME, leeway=5
        )
        expect_equal("sub", claims.get("sub"), USER_ID)
        if "kids" in state:
            expect_equal("kid of the user token", signing_key.key_id, state["kids"]["signing"])

    s.check("published.pyjwkclient_verifies_generated_user_token", pyjwkclient_user_token)

    def pyjwkclient_validation_key():
        expect("kids" in state, "no published kids (see published.jwks_*)")
        token = mint_user_token(w.validation, kid=state["kids"]["validation"])
        client = jwt.PyJWKClient(jwks_uri(), timeout=RPC_TIMEOUT, cache_jwk_set=False)
        key = client.get_signing_key_from_jwt(token)
        jwt.decode(token, key.key, algorithms=["RS256"], audience=SERVICE_NAME, issuer=SERVICE_NAME, leeway=5)
        # ... and the service itself accepts it under that kid.
        expect_ok(execute_workflow(p.stub, metadata(token)))

    s.check("published.pyjwkclient_and_service_accept_validation_kid", pyjwkclient_validation_key)


def scenarios_source_health(s: Suite, w: World) -> None:
    s.check("health.main.key_source_gitlab_serving", lambda: expect_health(w.main, "key-source/gitlab", "SERVING"))
    s.check(
        "health.main.key_source_customers_dot_serving",
        lambda: expect_health(w.main, "key-source/customers-dot", "SERVING", KEYS_TIMEOUT),
    )


def scenarios_provider_down(s: Suite, w: World) -> None:
    """Start-up with the GitLab provider unreachable, then the provider comes up."""
    d = w.extra["provider-down"]
    token = mint(w.gitlab_new, iss=w.down_base, scopes=(EXECUTE, GENERATE))

    s.check("provider_down.overall_health_serving", lambda: expect_health(d, "", "SERVING"))
    s.check(
        "provider_down.health_key_source_gitlab_not_serving",
        lambda: expect_health(d, "key-source/gitlab", "NOT_SERVING"),
    )

    def unavailable():
        outcome, seconds = timed(lambda: generate_token(d.stub, metadata(token)))
        expect_status(outcome, UNAVAILABLE, KEYS_UNAVAILABLE)
        expect_fast("the refusal", seconds, 2.0)

    s.check("provider_down.token_unavailable", unavailable)
    s.check("provider_down.customersdot_still_accepted", lambda: expect_ok(generate_token(d.stub, cdot_md_token(w))))

    def recovery():
        w.down_provider = OidcIssuer("gitlab-late", [w.gitlab_new], port=w.down_port)
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            outcome = generate_token(d.stub, metadata(token))
            elapsed = time.monotonic() - started
            if outcome.ok or elapsed > RECOVERY_TIMEOUT:
                break
            time.sleep(0.25)
        print(f"# provider-down recovery: {outcome!r} {elapsed:.1f} s after the provider started ({tries} tries)", flush=True)
        expect(outcome.ok, f"not accepted within {RECOVERY_TIMEOUT:.0f}s of the provider starting: last {outcome!r}")

    s.check("provider_down.token_accepted_after_provider_starts", recovery)
    s.check(
        "provider_down.health_key_source_gitlab_serving_after_recovery",
        lambda: expect_health(d, "key-source/gitlab", "SERVING", 3.0),
    )


def scenarios_rotation(s: Suite, w: World) -> None:
    """The provider rotates (max-age=86400 kept); the next token under the new key is accepted."""
    for label, new_key, with_kid in (("kid", w.rot_b, True), ("kidless", w.rot_c, False)):
        process = w.extra[f"rotation-{label}"]
        provider = w.providers[f"rotation-{label}"]
        state = {}

        s.check(f"rotation.{label}.source_ready", source_ready(process))
        s.check(
            f"rotation.{label}.old_key_accepted",
            lambda process=process, provider=provider, with_kid=with_kid: expect_ok(
                generate_token(process.stub, metadata(mint(w.rot_a, iss=provider.base, with_kid=with_kid)))
            ),
        )

        def rotate(process=process, provider=provider, new_key=new_key, with_kid=with_kid, label=label, state=state):
            token = mint(new_key, iss=provider.base, with_kid=with_kid, scopes=(EXECUTE, GENERATE))
            before = provider.jwks_gets()
            t0 = time.monotonic()
            provider.set_keys([new_key])
            outcome = generate_token(process.stub, metadata(token))
            ms = (time.monotonic() - t0) * 1000
            state["fetches"] = provider.jwks_gets() - before
            print(
                f"# rotation to acceptance ({label} token): {ms:.1f} ms ({outcome!r}; provider JWKS GETs +{state['fetches']})",
                flush=True,
            )
            expect_ok(outcome)

        s.check(f"rotation.{label}.new_key_accepted_first_try", rotate)
        s.check(
            f"rotation.{label}.one_jwks_refetch",
            lambda state=state: expect_equal("JWKS GETs caused by the rotation", state.get("fetches"), 1),
        )

        def steady(process=process, provider=provider, new_key=new_key, with_kid=with_kid):
            before = provider.jwks_gets() + provider.discovery_gets()
            for _ in range(5):
                expect_ok(generate_token(process.stub, metadata(mint(new_key, iss=provider.base, with_kid=with_kid))))
            expect_equal("provider GETs for 5 good tokens", provider.jwks_gets() + provider.discovery_gets() - before, 0)

        s.check(f"rotation.{label}.steady_state_no_fetch", steady)


def scenarios_flood(s: Suite, w: World) -> None:
    """~300 concurrent tokens with random kids: all refused, at most one provider fetch."""
    process = w.extra["flood"]
    provider = w.providers["flood"]
    count = 300
    state = {}

    s.check("flood.source_ready", source_ready(process))

    def flood():
        tokens = [mint(w.gitlab_new, iss=provider.base, kid=f"random-{uuid.uuid4().hex}") for _ in range(count)]
        before = provider.jwks_gets()
        with futures.ThreadPoolExecutor(max_workers=32) as pool:
            outcomes, seconds = timed(lambda: list(pool.map(lambda t: generate_token(process.stub, metadata(t)), tokens)))
        state["fetches"] = provider.jwks_gets() - before
        print(
            f"# random-kid flood: {count} tokens in {seconds:.2f} s, provider JWKS GETs during the flood: {state['fetches']}",
            flush=True,
        )
        wrong = [o for o in outcomes if o.code != UNAUTHENTICATED or o.details != FORBIDDEN]
        expect(not wrong, f"{len(wrong)} of {count} not refused with UNAUTHENTICATED {FORBIDDEN!r}, e.g. {wrong[:3]}")

    s.check("flood.random_kids_all_forbidden", flood)
    s.check(
        "flood.at_most_one_jwks_fetch",
        lambda: expect("fetches" in state and state["fetches"] <= 1, f"JWKS GETs during the flood: {state.get('fetches')}"),
    )
    s.check(
        "flood.good_token_accepted_after",
        lambda: expect_ok(generate_token(process.stub, metadata(mint(w.gitlab_old, iss=provider.base, with_kid=True)))),
    )
    s.check(
        "flood.good_kidless_token_accepted_after",
        lambda: expect_ok(generate_token(process.stub, metadata(mint(w.gitlab_new, iss=provider.base)))),
    )


def scenarios_outage(s: Suite, w: World, mode: str) -> None:
    """The GitLab provider answers 500 / garbage / hangs: cached keys keep verifying, a miss fails
    fast (or, while the fetch hangs, within the service's bounded wait) and CustomersDot is unaffected."""
    name = f"outage-{mode}"
    process = w.extra[name]
    provider = w.providers[name]
    state = {}

    s.check(f"{name}.source_ready", source_ready(process))

    def accepted_before():
        token = mint(w.gitlab_new, iss=provider.base, scopes=(EXECUTE, GENERATE))
        expect_ok(generate_token(process.stub, metadata(token)))
        state["token"] = token

    if not s.check(f"{name}.kidless_token_accepted_before", accepted_before):
        return
    # The refetch the miss causes reaches this document (garbage mode spoils only the JWKS).
    path = OidcIssuer.JWKS if mode == "garbage" else OidcIssuer.DISCOVERY
    before = provider.count(path)
    provider.set_mode(mode)
    try:
        miss_token = mint(w.gitlab_new, iss=provider.base, kid=f"unknown-{uuid.uuid4().hex}")
        if mode == "hang":
            result = {}

            def miss():
                result["outcome"], result["seconds"] = timed(
                    lambda: generate_token(process.stub, metadata(miss_token), timeout=HANG_MISS_TIMEOUT)
                )

            thread = threading.Thread(target=miss, name="hang-miss", daemon=True)
            thread.start()

            def fetch_hangs():
                deadline = time.monotonic() + 3.0
                while provider.count(path) == before and time.monotonic() < deadline:
                    time.sleep(0.05)
                expect(provider.count(path) > before, "the miss did not make the service refetch")

            s.check(f"{name}.miss_refetch_in_flight", fetch_hangs)
        else:

            def miss_fails_fast():
                outcome, seconds = timed(lambda: generate_token(process.stub, metadata(miss_token)))
                expect_status(outcome, UNAUTHENTICATED, FORBIDDEN)
                expect_fast("the miss", seconds, 2.0)
                expect(provider.count(path) > before, f"the miss did not make the service refetch {path}")

            s.check(f"{name}.unknown_kid_forbidden_fast_after_failed_refetch", miss_fails_fast)

        def cached():
            outcome, seconds = timed(lambda: generate_token(process.stub, metadata(state["token"])))
            expect_ok(outcome)
            expect_fast("the cached-key verification", seconds)

        s.check(f"{name}.cached_kidless_token_still_accepted", cached)

        def cdot():
            outcome, seconds = timed(lambda: generate_token(process.stub, cdot_md_token(w)))
            expect_ok(outcome)
            expect_fast("the CustomersDot token", seconds)

        s.check(f"{name}.customersdot_answers_promptly", cdot)
        s.check(f"{name}.health_key_source_gitlab_still_serving", lambda: expect_health(process, "key-source/gitlab", "SERVING"))
        if mode == "hang":

            def miss_bounded():
                thread.join(HANG_MISS_TIMEOUT + 2)
                expect(not thread.is_alive(), "the miss never returned")
                print(f"# miss while the provider hangs: {result['outcome']!r} after {result['seconds']:.2f} s", flush=True)
                expect_status(result["outcome"], UNAUTHENTICATED, FORBIDDEN)

            s.check(f"{name}.unknown_kid_forbidden_within_bounded_wait", miss_bounded)
    finally:
        provider.set_mode("ok")


def scenarios_discovery_issuer(s: Suite, w: World) -> None:
    """The built-in sources take their issuer from the discovery document under their URL: a GitLab
    reached by an internal URL names its external issuer there, and its tokens carry that one. A
    trailing slash in the document is part of the issuer (issue 16): tokens carry it too."""
    process = w.extra["issuer-mismatch"]
    mismatch = w.providers["mismatch"]
    slash = w.providers["slash"]

    s.check("discovery_issuer.trailing_slash.source_ready", source_ready(process, "customers-dot"))
    s.check(
        "discovery_issuer.trailing_slash.token_accepted",
        lambda: expect_ok(
            generate_token(
                process.stub,
                metadata(mint(w.cdot, iss=slash.base + "/", realm="self-managed", scopes=(GENERATE,)), realm="self-managed"),
            )
        ),
    )
    s.check(
        "discovery_issuer.trailing_slash.token_without_it_forbidden",
        lambda: expect_status(
            generate_token(
                process.stub,
                metadata(mint(w.cdot, iss=slash.base, realm="self-managed", scopes=(GENERATE,)), realm="self-managed"),
            ),
            UNAUTHENTICATED,
            FORBIDDEN,
        ),
    )

    s.check("discovery_issuer.external.source_ready", source_ready(process, "gitlab"))
    s.check(
        "discovery_issuer.external.token_of_the_document_issuer_accepted",
        lambda: expect_ok(generate_token(process.stub, metadata(mint(w.gitlab_new, iss=EXTERNAL_GITLAB, with_kid=True)))),
    )
    s.check(
        "discovery_issuer.external.kidless_token_accepted",
        lambda: expect_ok(generate_token(process.stub, metadata(mint(w.gitlab_new, iss=EXTERNAL_GITLAB, with_kid=False)))),
    )
    s.check(
        "discovery_issuer.external.token_of_the_internal_url_forbidden",
        lambda: expect_status(
            generate_token(process.stub, metadata(mint(w.gitlab_new, iss=mismatch.base))), UNAUTHENTICATED, FORBIDDEN
        ),
    )
    s.check(
        "discovery_issuer.external.other_key_forbidden",
        lambda: expect_status(
            generate_token(process.stub, metadata(mint(w.rogue, iss=EXTERNAL_GITLAB))), UNAUTHENTICATED, FORBIDDEN
        ),
    )

    def reported():
        _, _, body = http_get(f"http://127.0.0.1:{process.metrics_port}/key-sources")
        sources = {src["name"]: src for src in json.loads(body)["sources"]}
        gitlab = sources.get("gitlab", {})
        expect_equal("gitlab issuer", gitlab.get("issuer"), EXTERNAL_GITLAB)
        expect_equal("gitlab issuer_from", gitlab.get("issuer_from"), "discovery")
        expect_equal("customers-dot issuer", sources.get("customers-dot", {}).get("issuer"), slash.base + "/")

    s.check("discovery_issuer.key_sources_report_learned_issuers", reported)

    def operator_pages_not_public():
        for path in ("/key-sources", "/metrics"):
            try:
                status, _, _ = http_get(f"http://127.0.0.1:{process.http_port}{path}")
            except urllib.error.HTTPError as e:
                status = e.code
            expect_equal(f"{path} on the published-keys port", status, 404)

    s.check("operator.pages_are_not_on_the_published_keys_port", operator_pages_not_public)

    def metrics_served():
        status, headers, body = http_get(f"http://127.0.0.1:{process.metrics_port}/metrics")
        expect_equal("/metrics status", status, 200)
        text = body.decode()
        expect("text/plain" in headers.get("Content-Type", ""), f"content type {headers.get('Content-Type')!r}")
        handled = [line for line in text.splitlines() if line.startswith("grpc_server_handled_total{")]
        expect(
            any('grpc_method="GenerateToken"' in line and 'grpc_code="OK"' in line for line in handled),
            f"no GenerateToken OK in grpc_server_handled_total: {handled}",
        )
        refusals = [line for line in text.splitlines() if line.startswith("duo_workflow_auth_refusals_total{")]
        expect(
            any('issuer="unknown"' in line and not line.endswith(" 0") for line in refusals),
            f"the token of an issuer nobody serves is not counted as issuer=unknown: {refusals}",
        )

    s.check("operator.metrics_count_calls_and_refusals", metrics_served)

    def logged():
        lines = [line for line in process.log_text().splitlines() if "issuer learned" in line]
        expect(any(EXTERNAL_GITLAB in line and mismatch.base in line for line in lines), f"no log line names the URL and the learned issuer: {lines}")

    s.check("discovery_issuer.learned_issuer_logged", logged)


def scenarios_strict_booleans(s: Suite, binary: str) -> None:
    """DUO_WORKFLOW_AUTH__ENABLED is true or false: `0` (which GitLab's service reads as "on")
    stops start-up, naming the variable, instead of turning authentication off."""
    for value in ("0", "off"):

        def refused(value=value):
            env = clean_environment()
            env.update(
                {
                    "PORT": "0",
                    "DUO_WORKFLOW_HTTP__PORT": "0",
                    "DUO_WORKFLOW_AUTH__ENABLED": value,
                    "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": "",
                    "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": "",
                }
            )
            try:
                done = subprocess.run(
                    [binary, "serve", "--listen", "127.0.0.1"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=STARTUP_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                raise Failure(f"DUO_WORKFLOW_AUTH__ENABLED={value}: the service started") from None
            expect(done.returncode != 0, f"DUO_WORKFLOW_AUTH__ENABLED={value}: exit status 0")
            stderr = done.stderr.decode(errors="replace")
            expect("DUO_WORKFLOW_AUTH__ENABLED" in stderr, f"the variable is not named on stderr: {stderr[-300:]!r}")

        s.check(f"config.auth_enabled_{value}_stops_start_up", refused)


def scenarios_empty_provider_url(s: Suite, w: World) -> None:
    """DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL="" (the rotation-kidless process): no CustomersDot."""
    process = w.extra["rotation-kidless"]
    s.check(
        "empty_customersdot_url.customersdot_token_forbidden",
        lambda: expect_status(generate_token(process.stub, cdot_md_token(w)), UNAUTHENTICATED, FORBIDDEN),
    )

    def logged():
        deadline = time.monotonic() + 2.0
        while "unknown issuer" not in process.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        expect("unknown issuer" in process.log_text(), "the log never gives the reason 'unknown issuer'")

    s.check("empty_customersdot_url.reason_unknown_issuer_logged", logged)

    def no_source():
        outcome = health(process.channel, "key-source/customers-dot")
        expect(not (outcome.ok and outcome.value == "SERVING"), "a disabled CustomersDot source reports SERVING")

    s.check("empty_customersdot_url.no_serving_customersdot_source", no_source)


# --------------------------------------------------------------------------------------------
# The listener (issue items 1-3): TLS configured by DUO_WORKFLOW_TLS__* alone, [::1], metadata
# limits, with grpcio as GitLab's clients use it.
# --------------------------------------------------------------------------------------------


def test_pki(directory: Path):
    """A CA and a server certificate it signed for localhost, 127.0.0.1 and ::1: (ca_pem, cert_path,
    key_path). Generated per run, never committed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("interop CA"))
        .issuer_name(name("interop CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca.public_bytes(pem), cert_path, key_path


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def scenarios_listener(s: Suite, w: World, binary: str, log_dir: Path) -> None:
    ca_pem, cert_path, key_path = test_pki(log_dir)
    common = {
        "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": w.gitlab.base,
        "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": "",
    }
    tls = w.spawn(
        "tls",
        binary,
        log_dir,
        {
            **common,
            "DUO_WORKFLOW_TLS__ENABLED": "true",
            "DUO_WORKFLOW_TLS__CERT_FILE": str(cert_path),
            "DUO_WORKFLOW_TLS__KEY_FILE": str(key_path),
        },
        credentials=grpc.ssl_channel_credentials(root_certificates=ca_pem),
    )
    started = s.check("listener.tls.process_answers_health_over_tls", tls.wait_ready)
    if started:
        s.check("listener.tls.grpcio_generate_token", lambda: expect_ok(wait_for_keys(tls, w.good_md())))

        def plaintext_refused():
            channel = grpc.insecure_channel(f"127.0.0.1:{tls.port}", options=CHANNEL_OPTIONS)
            try:
                outcome = generate_token(pb_grpc.DuoWorkflowStub(channel), w.good_md(), timeout=2.0)
            finally:
                channel.close()
            expect(not outcome.ok, "a plaintext client was served by the TLS listener")

        s.check("listener.tls.plaintext_client_refused", plaintext_refused)

        def untrusted_refused():
            other_ca, _, _ = test_pki(log_dir / "other")
            credentials = grpc.ssl_channel_credentials(root_certificates=other_ca)
            options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", "localhost")]
            channel = grpc.secure_channel(f"127.0.0.1:{tls.port}", credentials, options=options)
            try:
                outcome = generate_token(pb_grpc.DuoWorkflowStub(channel), w.good_md(), timeout=2.0)
            finally:
                channel.close()
            expect(outcome.code == grpc.StatusCode.UNAVAILABLE, f"a client not trusting the CA got {outcome!r}")

        (log_dir / "other").mkdir(exist_ok=True)
        s.check("listener.tls.client_not_trusting_the_certificate_fails", untrusted_refused)

        def metadata_limit():
            padded = lambda n: w.good_md() + (("x-padding", "p" * n),)  # noqa: E731
            expect_ok(generate_token(tls.stub, padded(22 * 1024)))
            expect_status(generate_token(tls.stub, padded(30 * 1024)), grpc.StatusCode.RESOURCE_EXHAUSTED)
            expect_ok(generate_token(tls.stub, w.good_md()))

        s.check("listener.metadata_24_kib_passes_30_kib_resource_exhausted", metadata_limit)

    if not ipv6_loopback():
        print("# no IPv6 loopback on this machine: listener.ipv6 checks skipped", flush=True)
        return
    v6 = w.spawn("ipv6", binary, log_dir, common, listen="::1")
    if s.check("listener.ipv6.process_answers_health_on_ipv6_loopback", v6.wait_ready):
        s.check("listener.ipv6.grpcio_generate_token", lambda: expect_ok(wait_for_keys(v6, w.good_md())))


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

    # PyJWKClient fetches with urllib, which honours proxy variables.
    for var in ("no_proxy", "NO_PROXY"):
        os.environ[var] = ",".join(filter(None, [os.environ.get(var, ""), "127.0.0.1", "localhost"]))
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
            if all(p.stub is not None for p in world.core):
                scenarios_authorization_header(suite, world)
                scenarios_verification(suite, world)
                scenarios_header_binding(suite, world)
                scenarios_authorization(suite, world)
                minted = scenarios_generate_token(suite, world)
                scenarios_workflow(suite, world, minted)
                scenarios_debug_mode(suite, world)
                scenarios_no_upstream(suite, world)
                scenarios_published_keys(suite, world)
                scenarios_source_health(suite, world)
                scenarios_provider_down(suite, world)
                scenarios_rotation(suite, world)
                scenarios_flood(suite, world)
                for mode in ("500", "garbage", "hang"):
                    scenarios_outage(suite, world, mode)
                scenarios_discovery_issuer(suite, world)
                scenarios_strict_booleans(suite, str(binary.resolve()))
                scenarios_empty_provider_url(suite, world)
                scenarios_listener(suite, world, str(binary.resolve()), tmp)
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
        # The 2026 contract (SPEC Part C): all seven RPCs to a raw-bytes executor, processes of its own.
        contract_test.run(suite, sys.modules[__name__], str(binary.resolve()), tmp)
        # The hostile-input battery (SECURITY-CHECKLIST.md), against a process of its own.
        hostile_test.run(suite, sys.modules[__name__], str(binary.resolve()), tmp)
        # The deployment files (deploy/) against the code and the binary, offline.
        deploy_test.run(suite, sys.modules[__name__], str(binary.resolve()), tmp)
        # GitLab's key rotation, one replica at a time, under a client's load.
        rotation_test.run(suite, sys.modules[__name__], str(binary.resolve()), tmp)
        # Real OpenID providers (oidc-provider, Node) shaped like Keycloak, Okta, Auth0, Azure AD.
        providers_test.run(suite, sys.modules[__name__], str(binary.resolve()), tmp)
        check_no_panics(suite)
        keep = os.environ.get("INTEROP_KEEP_LOGS")
        if keep:  # every process's whole log, for a failure that the last lines do not explain
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in tmp.rglob("*.log"):
                shutil.copy(log, Path(keep) / log.relative_to(tmp).as_posix().replace("/", "_"))
    print(f"# {time.monotonic() - started:.1f}s", flush=True)
    print(f"{suite.passed} passed, {suite.failed} failed", flush=True)
    return 0 if suite.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
