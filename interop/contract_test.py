"""The 2026 contract (SPEC Part C) for the interop suite: all seven RPCs through the service binary.

`interop_test.py` calls `run(suite, helpers, binary, log_dir)`; the checks land in the same
`N passed, N failed` line. Two service processes of their own, configured only through
environment variables (no `--config` file):

* "relay": trusts a Python OIDC issuer (`DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL`; tokens carry the
  `iss` its discovery document states), signs user tokens with
  `DUO_WORKFLOW_SELF_SIGNED_JWT__SIGNING_KEY`, relays to a Python workflow executor
  (`DUO_WORKFLOW_UPSTREAM__URL`), allows one method beyond the contract
  (`DUO_WORKFLOW_UPSTREAM__ALLOWED_METHODS`) and serves reflection
  (`DUO_WORKFLOW_GRPC_REFLECTION_ENABLED=true`); it learns `server_capabilities` from the
  executor's `ListCapabilities`;
* "configured": the same issuer, an executor address nothing listens on,
  `DUO_WORKFLOW_UPSTREAM__SERVER_CAPABILITIES`, `DUO_WORKFLOW_USER_TOKENS__DELEGABLE_SCOPES`, no
  reflection.

The executor is a grpcio server whose handlers are registered with identity (de)serializers
(`None`): it receives the exact bytes of every message and sends bytes chosen here, and records
every call (method, metadata, request bytes, the deadline it was given, when it saw the call end).
The client side calls with `channel.unary_unary/stream_stream(path, None, None)` likewise.
Messages are BUILT with the stubs generated from `proto/contract.proto` (plus hand-encoded fields
the contract does not know, and non-canonical encodings that a decode/re-encode would change),
then compared as bytes.

Checked: every row of SPEC C2 with its status and `details` (and that refused calls never reach
the executor); every `ClientEvent` and `Action` variant, unknown fields, the unary RPCs and
TrackSelfHostedExecuteWorkflow byte-identical both ways; the executor's headers, trailers, status,
details and `grpc-status-details-bin` back to the client; the caller's metadata to the executor;
deadlines and cancellation propagated; the 4 MiB limit each way; an unreachable executor;
health and unknown methods without a token; reflection on and off; `server_capabilities` learned
and configured; the user token's scopes and copied claims (SPEC C3).
"""

import collections
import json
import queue
import threading
import time
import uuid
from concurrent import futures

import grpc
import jwt
from google.protobuf import any_pb2, descriptor_pool, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

CONTRACT_BUDGET = 60.0  # seconds granted to these checks on top of the suite's own budget
MIB4 = 4 * 1024 * 1024  # GitLab's message limit, each way
BIG = 16 * 1024 * 1024  # the Python peers' own limits: above 4 MiB, so the service is the one refusing
BIG_OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
CAPABILITIES_TIMEOUT = 15.0  # seconds until GenerateToken reports what the executor listed
OBSERVE_TIMEOUT = 3.0  # seconds within which the executor must see a cancellation or deadline
DELAY = 1.0  # seconds: the client deadline of the deadline checks (the executor waits far longer)

AGENT = "duo_agent_platform"
CHAT = "duo_chat"
EXECUTE = "duo_workflow_execute_workflow"
GENERATE = "duo_workflow_generate_token"
FILES = "include_file_context"
DELEGABLE = [AGENT, CHAT, EXECUTE, FILES]
ALL_SCOPES = (AGENT, CHAT, EXECUTE, FILES)

RPCS = [
    "ExecuteWorkflow",
    "GenerateToken",
    "ListCapabilities",
    "ListTools",
    "ListFlows",
    "TrackSelfHostedExecuteWorkflow",
    "ValidateFlowConfig",
]
STREAMING = ("ExecuteWorkflow", "TrackSelfHostedExecuteWorkflow")
LISTING = ("ListCapabilities", "ListTools", "ListFlows", "ValidateFlowConfig")
EXTRA_SERVICE = "interop.extra.v1.Echo"
ALLOWED_METHOD = f"/{EXTRA_SERVICE}/Say"  # DUO_WORKFLOW_UPSTREAM__ALLOWED_METHODS
NOT_ALLOWED_METHOD = f"/{EXTRA_SERVICE}/Shout"  # implemented by the executor, never allowed
UNKNOWN_RPC = "/DuoWorkflow/DeleteWorkflow"  # implemented by the executor, not in the contract

METHOD_NOT_FOUND = "Method not found!"
EXECUTOR_UNAVAILABLE = "Workflow executor unavailable"
DENIED_GENERATE = "Unauthorized to generate token"
DENIED_TRACK = "Unauthorized to track self-hosted workflow execution"
MUTUALLY_EXCLUSIVE = "flowConfigId and flowConfig are mutually exclusive — set one or the other, not both."
NEEDS_SCHEMA = "flowConfigId requires flowConfigSchemaVersion to also be provided."
NEEDS_VERSION = "flowConfigId requires flowVersion to also be provided."
NEEDS_ID = "flowVersion requires flowConfigId to also be provided."

EXECUTOR_CAPABILITIES = ["tool_call_approval", "tool_call_pattern_approval", "flow_semantic_versioning", "interop_executor_only"]
CONFIGURED_CAPABILITIES = ["tool_call_approval", "flow_semantic_versioning", "interop_configured_only"]
CONFIGURED_DELEGABLE = [CHAT, FILES]

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

# Metadata the client sets to steer and find a call at the executor.
CALL_KEY = "x-interop-call"
SCRIPT_KEY = "x-interop-script"


# --------------------------------------------------------------------------------------------
# Protobuf wire format, by hand: fields the contract does not know, and non-canonical encodings
# --------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | 0) + varint(value)


def padded(message: bytes, size: int, number: int = 99) -> bytes:
    """`message` with an unknown length-delimited field appended so that it is exactly `size` bytes."""
    for payload in range(max(0, size - len(message) - 8), size - len(message) + 1):
        out = message + field(number, b"p" * payload)
        if len(out) == size:
            return out
    raise ValueError(f"cannot pad {len(message)} bytes to {size}")


# --------------------------------------------------------------------------------------------
# The messages, built with the generated stubs
# --------------------------------------------------------------------------------------------


def struct(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


FLOW_CONFIG = {
    "version": "v1",
    "environment": "ambient",
    "components": [{"name": "fixer", "type": "AgentComponent", "prompt_id": "fix_pipeline", "toolset": ["read_file"]}],
    "routers": [{"from": "fixer", "to": "end"}],
    "flow": {"entry_point": "fixer"},
}


class Messages:
    """Every message the checks send or expect, as bytes; `pb` is the generated contract module."""

    def __init__(self, pb):
        self.pb = pb

    # ---- ClientEvent ----------------------------------------------------------------------

    def start(self, *, workflow_id: str, every_field=False, **fields) -> "pb.StartWorkflowRequest":
        pb = self.pb
        base = dict(
            clientVersion="interop-2026.1",
            workflowID=workflow_id,
            goal="make the pipeline green",
            workflowMetadata='{"git_url":"https://gitlab.example.com/g/p.git","git_sha":"abc123"}',
            clientCapabilities=["shell_command", "tool_call_approval", "incremental_streaming"],
        )
        if every_field:
            base.update(
                workflowDefinition="software_development",
                mcpTools=[
                    pb.McpTool(
                        name="search_issues",
                        description="Searches GitLab issues",
                        inputSchema='{"type":"object","properties":{"q":{"type":"string"}}}',
                        icons=pb.Icons(
                            items=[
                                pb.Icon(url="https://example.com/i.png", mime_type="image/png", sizes=["16x16", "32x32"], theme="dark"),
                                pb.Icon(url="data:image/svg+xml;base64,PHN2Zy8+"),
                            ]
                        ),
                        annotations=pb.ToolAnnotations(
                            title="Search issues",
                            read_only_hint=True,
                            destructive_hint=False,
                            idempotent_hint=True,
                            open_world_hint=False,
                        ),
                        trusted=True,
                    ),
                    pb.McpTool(name="bare", description="", inputSchema="{}"),
                ],
                additional_context=[
                    pb.AdditionalContext(category="file", id="src/main.rs", content="fn main() {}", metadata='{"lang":"rust"}'),
                    pb.AdditionalContext(category="os_information", content='{"platform":"linux"}'),
                ],
                approval=pb.Approval(
                    approval=pb.Approval.Approved(
                        remember_approval=True,
                        tool_name="run_command",
                        tool_args_json='{"program":"cargo","args":["test"]}',
                        approval_source=pb.Approval.APPROVAL_SOURCE_PRETOOLUSE_HOOK,
                        policy_ref=pb.Approval.PolicyRef(origin="project", file=".gitlab/duo/policy.yml", hash="sha256:00ff", version="3"),
                    )
                ),
                flowConfig=struct(FLOW_CONFIG),
                flowConfigSchemaVersion="v1",
                preapproved_tools=["read_file", "list_dir"],
                flowConfigId="fix_pipeline",
                flowVersion="1.2.0",
                streaming=True,
                resume_checkpoint_ts="2026-01-15T10:00:00.000000+00:00",
            )
        base.update(fields)
        return pb.StartWorkflowRequest(**base)

    def event(self, start) -> bytes:
        return self.pb.ClientEvent(startRequest=start).SerializeToString()

    def start_event(self, workflow_id: str, **fields) -> bytes:
        """A first message for the flow given by `fields` (default: the legacy workflowDefinition)."""
        return self.event(self.start(workflow_id=workflow_id, **fields))

    def client_events(self, workflow_id: str):
        """(label, bytes) of one ExecuteWorkflow stream using every ClientEvent variant: a catalog
        flow first (with every field but the inline flowConfig, and an unknown field 18 inside the
        StartWorkflowRequest), then each kind of action response, an unknown field 6 inside an
        ActionResponse, a heartbeat, a start request with every field at once (legal after the
        first message), a ClientEvent of a kind not yet defined, fields out of order, and stop."""
        pb = self.pb
        first = self.start(workflow_id=workflow_id, every_field=True)
        first.ClearField("flowConfig")
        first_bytes = first.SerializeToString() + field(18, b"a StartWorkflowRequest field of 2027")
        plain = pb.ActionResponse(requestID="a-runReadFile", plainTextResponse=pb.PlainTextResponse(response="file contents\n", error=""))
        plain_error = pb.ActionResponse(requestID="a-runCommand", plainTextResponse=pb.PlainTextResponse(error="exit status 1"))
        http = pb.ActionResponse(
            requestID="a-runHTTPRequest",
            httpResponse=pb.HttpResponse(
                headers={"content-type": "application/json", "x-request-id": "r-1"}, statusCode=201, body='{"id":1}', error=""
            ),
        )
        notification = pb.ActionResponse(
            requestID="a-scheduleNotification",
            scheduleNotificationResponse=pb.ScheduleNotificationResponse(accepted=True, reason="scheduled", fires_at="2026-01-15T11:00:00Z"),
        )
        future_response = pb.ActionResponse(
            requestID="a-future", plainTextResponse=pb.PlainTextResponse(response="ok")
        ).SerializeToString() + field(6, b"an ActionResponse field of 2027")
        reordered = (  # field 2 (response_type member plainTextResponse=3) before requestID=1, default values explicit
            field(3, field(2, b"") + field(1, b"out of order"))
            + field(1, b"a-reordered")
        )
        return [
            ("startRequest (catalog flow, every field, unknown field 18)", field(1, first_bytes)),
            ("actionResponse plainTextResponse", pb.ClientEvent(actionResponse=plain).SerializeToString()),
            ("actionResponse plainTextResponse error", pb.ClientEvent(actionResponse=plain_error).SerializeToString()),
            ("actionResponse httpResponse", pb.ClientEvent(actionResponse=http).SerializeToString()),
            ("actionResponse scheduleNotificationResponse", pb.ClientEvent(actionResponse=notification).SerializeToString()),
            ("actionResponse with unknown field 6", field(2, future_response)),
            ("heartbeat", pb.ClientEvent(heartbeat=pb.HeartbeatRequest(timestamp=1768471200123)).SerializeToString()),
            ("startRequest with every field at once", self.event(self.start(workflow_id=workflow_id, every_field=True))),
            ("a ClientEvent kind of 2027 (field 5)", field(5, varint_field(1, 42))),
            ("actionResponse encoded out of order", field(2, reordered)),
            ("stopWorkflow", pb.ClientEvent(stopWorkflow=pb.StopWorkflowRequest(reason="user cancelled")).SerializeToString()),
        ]

    def inline_flow_events(self, workflow_id: str):
        """A stream whose first message runs an inline flowConfig (every field but the catalog ones),
        with a rejected approval; then a heartbeat with a non-minimal varint and stop."""
        pb = self.pb
        first = self.start(workflow_id=workflow_id, every_field=True, workflowDefinition="")
        first.ClearField("flowConfigId")
        first.ClearField("flowVersion")
        first.approval.CopyFrom(pb.Approval(rejection=pb.Approval.Rejected(message="not on main")))
        # timestamp 5 as a 3-byte varint: a re-encoder would write one byte.
        overlong_heartbeat = field(3, varint(1 << 3 | 0) + bytes([0x85, 0x80, 0x00]))
        return [
            ("startRequest (inline flowConfig, rejection)", self.event(first)),
            ("heartbeat with an overlong varint", overlong_heartbeat),
            ("stopWorkflow", pb.ClientEvent(stopWorkflow=pb.StopWorkflowRequest(reason="")).SerializeToString()),
        ]

    # ---- Action ---------------------------------------------------------------------------

    def actions(self):
        """(label, bytes): every Action variant of C1, then an Action carrying a field the contract
        does not define, an action kind of 2027, and fields out of order."""
        pb = self.pb
        variants = {
            "runCommand": pb.RunCommandAction(program="cargo", arguments=["test", "--workspace"], flags=["--color=never"], timeout=600),
            "runHTTPRequest": pb.RunHTTPRequest(method="POST", path="/api/v4/projects/1/issues", body='{"title":"flaky"}'),
            "runReadFile": pb.ReadFile(filepath="README.md", limit=200, offset=10),
            "runWriteFile": pb.WriteFile(filepath="NOTES.md", contents="héllo — wörld\n"),
            "runGitCommand": pb.RunGitCommand(command="log", arguments="--oneline -5", repository_url="https://gitlab.example.com/g/p.git"),
            "runEditFile": pb.EditFile(filepath="src/lib.rs", oldString="todo!()", newString="42"),
            "newCheckpoint": pb.NewCheckpoint(
                status="RUNNING",
                checkpoint='{"v":1,"channel_values":{}}',
                goal="make the pipeline green",
                errors=["tool failed once"],
                agent_context_usage={"planner": pb.TokenBreakdown(total_tokens=1200, max_tokens=200000)},
            ),
            "listDirectory": pb.ListDirectory(directory="src"),
            "grep": pb.Grep(search_directory=".", pattern="TODO|FIXME", case_insensitive=True),
            "findFiles": pb.FindFiles(name_pattern="**/*.rs"),
            "runMCPTool": pb.RunMCPTool(name="search_issues", args='{"q":"flaky"}'),
            "mkdir": pb.Mkdir(directory_path="tmp/new"),
            "runReadFiles": pb.ReadFiles(filepaths=["a.txt", "b/c.txt"]),
            "runShellCommand": pb.RunShellCommand(command="make test 2>&1 | tail", timeout=300),
            "trackLlmCallForSelfHosted": pb.TrackLlmCallForSelfHosted(
                workflowID="wf-1", featureQualifiedName="duo_agent_platform.software_development", featureAiCatalogItem=True
            ),
            "scheduleNotification": pb.ScheduleNotification(task_id="t-1", condition="pipeline_finished", message="done"),
        }
        defined = [f.name for f in pb.Action.DESCRIPTOR.oneofs_by_name["action"].fields]
        missing = [name for name in defined if name not in variants]
        if missing:
            raise ValueError(f"the contract's Action has variants these checks do not send: {missing}")
        out = [(name, pb.Action(requestID=f"a-{name}", **{name: msg}).SerializeToString()) for name, msg in variants.items()]
        inner = pb.ReadFile(filepath="x").SerializeToString() + field(4, b"a ReadFile field of 2027")
        out.append(("runReadFile with unknown field 4", field(1, b"a-unknown-inner") + field(4, inner)))
        out.append(("an action kind of 2027 (field 18)", field(1, b"a-future") + field(18, field(1, b"rm -rf /tmp/x"))))
        out.append(("unknown field 99 on Action", pb.Action(requestID="a-extra", mkdir=pb.Mkdir(directory_path="d")).SerializeToString() + field(99, b"x")))
        out.append(("Action encoded out of order", field(13, field(1, b"d2")) + field(1, b"a-reordered")))
        return out

    # ---- the other RPCs -------------------------------------------------------------------

    def track_events(self):
        pb = self.pb
        e = pb.TrackSelfHostedClientEvent(
            requestID="t-1", workflowID="wf-1", featureQualifiedName="duo_agent_platform.chat", featureAiCatalogItem=True
        ).SerializeToString()
        return [
            ("every field", e),
            ("unknown field 9", pb.TrackSelfHostedClientEvent(requestID="t-2").SerializeToString() + field(9, b"2027")),
            ("out of order", field(3, b"duo_chat.chat") + field(1, b"t-3")),
        ]

    def track_replies(self):
        pb = self.pb
        return [
            pb.TrackSelfHostedAction(requestID="t-1").SerializeToString(),
            pb.TrackSelfHostedAction(requestID="t-2").SerializeToString() + field(2, b"a TrackSelfHostedAction field of 2027"),
            field(1, b"") + field(1, b"t-3"),  # the last value wins; a re-encoder would write one
        ]

    def unary_requests(self):
        """Per RPC, a request with fields set, a field the contract reserves or does not know."""
        pb = self.pb
        flows_filter = pb.ListFlowsRequestFilter(flow_identifier=["developer", "fix_pipeline"], environment=["remote"], version=["v1"])
        return {
            "ListCapabilities": pb.ListCapabilitiesRequest().SerializeToString() + field(5, b"a request field of 2027"),
            "ListTools": field(3, b"") + pb.ListToolsRequest().SerializeToString(),
            "ListFlows": field(1, flows_filter.SerializeToString() + field(1, b"reserved field 1 of the filter")),
            "ValidateFlowConfig": pb.ValidateFlowConfigRequest(flow_config=struct(FLOW_CONFIG)).SerializeToString()
            + field(2, b"v1"),  # reserved 2, "schema_version"
            ALLOWED_METHOD: b"\x00\xffnot protobuf at all\n",
        }

    def unary_responses(self):
        pb = self.pb
        return {
            "ListCapabilities": pb.ListCapabilitiesResponse(
                capabilities=[pb.Capability(name=n, metadata=json.dumps({"since": "18.8"})) for n in EXECUTOR_CAPABILITIES]
            ).SerializeToString()
            + field(7, b"a ListCapabilitiesResponse field of 2027"),
            "ListTools": pb.ListToolsResponse(
                tools=[struct({"name": "read_file", "description": "Reads a file", "args_schema": {"type": "object"}})],
                eval_dataset=[struct({"input": "read README", "expected": ["read_file"]})],
            ).SerializeToString()
            + field(3, b"x"),
            "ListFlows": pb.ListFlowsResponse(configs=[struct(dict(FLOW_CONFIG, name="fix_pipeline"))]).SerializeToString(),
            "ValidateFlowConfig": varint_field(1, 0) + field(2, b"components[0].prompt_id: unknown") + varint_field(3, 7),
            # If the service ever relayed GenerateToken, the caller would get this token.
            "GenerateToken": pb.GenerateTokenResponse(token="minted-by-the-executor", expiresAt=1).SerializeToString(),
            ALLOWED_METHOD: b"\x01raw reply \xfe",
            NOT_ALLOWED_METHOD: b"should never be relayed",
            UNKNOWN_RPC: b"should never be relayed",
        }

    def big_action(self, size: int) -> bytes:
        return padded(self.pb.Action(requestID="a-big", runWriteFile=self.pb.WriteFile(filepath="big.bin")).SerializeToString(), size)

    def big_event(self, size: int) -> bytes:
        response = self.pb.ActionResponse(requestID="a-big", plainTextResponse=self.pb.PlainTextResponse(response="big"))
        return padded(self.pb.ClientEvent(actionResponse=response).SerializeToString(), size)


# --------------------------------------------------------------------------------------------
# The workflow executor, on raw bytes
# --------------------------------------------------------------------------------------------


class Record:
    """One call as the executor saw it."""

    def __init__(self, method: str, context):
        self.method = method
        self.metadata = [(m.key, m.value) for m in context.invocation_metadata()]
        first = dict(self.metadata)
        self.call_id = first.get(CALL_KEY)
        self.script = first.get(SCRIPT_KEY, "")
        self.time_remaining = context.time_remaining()
        self.requests = []
        self.started = time.monotonic()
        self.inactive_at = None  # when a waiting handler saw its context go inactive
        self.ended_at = None  # when grpcio ran the termination callback
        self.done = threading.Event()


class RichStatus(collections.namedtuple("RichStatus", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


class RawExecutor:
    """A workflow executor implementing the seven RPCs (and two methods beyond the contract) on raw
    bytes. The `x-interop-script` metadata steers a call:

    * "" (default): unary calls answer `Messages.unary_responses()[method]`; ExecuteWorkflow reads
      its first message, sends every `Messages.actions()` and reads the rest; TrackSelfHosted
      answers each event with the next `track_replies()`;
    * "status": response headers, one message (streams), then an abort with a rich status, custom
      trailers and non-ASCII details;
    * "abort": the same abort before any response header or message: grpcio answers Trailers-Only
      (one HEADERS frame carrying the status, ending the stream), as GitLab's Python executor does
      whenever it refuses a call;
    * "headers-ok": response headers, the usual answer, custom trailers, OK;
    * "wait": reads nothing, waits (up to 10 s) for the call to end, noting when it saw that;
    * "hold" (streams): one action, then "wait";
    * "early-end" (ExecuteWorkflow): reads the first message, sends every action and ends OK
      without waiting for the client to half-close;
    * "empty" (streams): reads everything, answers nothing, ends OK (grpcio: Trailers-Only);
    * "big:N": the answer is one message of exactly N bytes.
    """

    STATUS_DETAILS = "executor refused: quota über — 2026"
    HEADERS = (("x-interop-header", "from the executor"), ("x-interop-header-bin", b"\x00\x01\xfeheader"))
    TRAILERS = (("x-interop-trailer", "trailing value"), ("x-interop-trailer-bin", b"\xff\x00trailer"))
    WAIT_LIMIT = 10.0

    def __init__(self, messages: Messages):
        self.m = messages
        self.actions = [b for _, b in messages.actions()]
        self.track_replies = messages.track_replies()
        self.responses = messages.unary_responses()
        self.records = []
        self.lock = threading.Lock()
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason="INTEROP_QUOTA", domain="executor.interop", metadata={"limit": "3"}))
        help_detail = any_pb2.Any()
        help_detail.Pack(error_details_pb2.Help(links=[error_details_pb2.Help.Link(description="why", url="https://example.com/why")]))
        self.rich = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=self.STATUS_DETAILS, details=[detail, help_detail])
        self.rich_bytes = self.rich.SerializeToString()

        def unary(method):
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: self.unary(method, request, context), request_deserializer=None, response_serializer=None
            )

        def stream(method):
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: self.stream(method, requests, context), request_deserializer=None, response_serializer=None
            )

        contract = {name: (stream(name) if name in STREAMING else unary(name)) for name in RPCS}
        contract["DeleteWorkflow"] = unary(UNKNOWN_RPC)
        extra = {"Say": unary(ALLOWED_METHOD), "Shout": unary(NOT_ALLOWED_METHOD)}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=BIG_OPTIONS)
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("DuoWorkflow", contract),
                grpc.method_handlers_generic_handler(EXTRA_SERVICE, extra),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def status(self):
        return RichStatus(FAILED_PRECONDITION, self.STATUS_DETAILS, self.TRAILERS + (("grpc-status-details-bin", self.rich_bytes),))

    # ---- recording ------------------------------------------------------------------------

    def begin(self, method, context) -> Record:
        record = Record(method, context)

        def ended():
            record.ended_at = time.monotonic()
            record.done.set()

        context.add_callback(ended)
        with self.lock:
            self.records.append(record)
        return record

    def calls(self, call_id):
        with self.lock:
            return [r for r in self.records if r.call_id == call_id]

    def call(self, call_id, timeout=2.0):
        """The record of `call_id`, waiting a little for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.calls(call_id)
            if found or time.monotonic() > deadline:
                return found[0] if found else None
            time.sleep(0.02)

    def touched_by(self, marker: str):
        """Records whose metadata or request bytes mention `marker`."""
        needle = marker.encode()
        with self.lock:
            records = list(self.records)
        return [
            r
            for r in records
            if any(marker == v or (isinstance(v, str) and marker in v) for _, v in r.metadata)
            or any(needle in request for request in r.requests)
        ]

    def methods_seen(self):
        with self.lock:
            return {r.method for r in self.records}

    def wait_inactive(self, record, context):
        deadline = time.monotonic() + self.WAIT_LIMIT
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not context.is_active():
            record.inactive_at = time.monotonic()

    # ---- handlers -------------------------------------------------------------------------

    def unary(self, method, request, context):
        record = self.begin(method, context)
        record.requests.append(request)
        script = record.script
        if script == "abort":
            context.abort_with_status(self.status())
        if script == "status":
            context.send_initial_metadata(self.HEADERS)
            context.abort_with_status(self.status())
        if script == "wait":
            self.wait_inactive(record, context)
            return b""
        if script.startswith("big:"):
            return padded(b"", int(script[4:]))
        if script == "headers-ok":
            context.send_initial_metadata(self.HEADERS)
            context.set_trailing_metadata(self.TRAILERS)
        return self.responses[method]

    def stream(self, method, requests, context):
        record = self.begin(method, context)
        script = record.script

        def take():
            try:
                request = next(requests)
            except StopIteration:
                return None
            record.requests.append(request)
            return request

        def drain():
            try:
                for request in requests:
                    record.requests.append(request)
            except Exception:  # the call ended under us
                pass

        if script == "wait":
            self.wait_inactive(record, context)
            return
        if script == "abort":
            take()
            context.abort_with_status(self.status())
        if method == "TrackSelfHostedExecuteWorkflow" and script in ("", "headers-ok"):
            if script == "headers-ok":
                context.send_initial_metadata(self.HEADERS)
            i = 0
            while take() is not None:
                yield self.track_replies[i % len(self.track_replies)]
                i += 1
            if script == "headers-ok":
                context.set_trailing_metadata(self.TRAILERS)
            return
        take()
        if script == "status":
            context.send_initial_metadata(self.HEADERS)
            yield self.actions[0]
            context.abort_with_status(self.status())
        if script == "hold":
            yield self.actions[0]
            self.wait_inactive(record, context)
            return
        if script.startswith("big:"):
            yield self.m.big_action(int(script[4:]))
            drain()
            return
        if script == "empty":
            drain()
            return
        if script == "early-end":
            for action in self.actions:
                yield action
            return
        if script == "headers-ok":
            context.send_initial_metadata(self.HEADERS)
        for action in self.actions:
            yield action
        drain()
        if script == "headers-ok":
            context.set_trailing_metadata(self.TRAILERS)

    def stop(self):
        self.server.stop(grace=None)


# --------------------------------------------------------------------------------------------
# Calls on raw bytes
# --------------------------------------------------------------------------------------------


class RawOutcome:
    def __init__(self, code=OK, details="", responses=(), initial=(), trailing=(), error=None, seconds=0.0):
        self.code = code
        self.details = details
        self.responses = list(responses)
        self.initial = tuple(initial or ())
        self.trailing = tuple(trailing or ())
        self.error = error
        self.seconds = seconds

    @property
    def ok(self):
        return self.code == OK

    def __repr__(self):
        return "OK" if self.ok else f"{self.code.name} {self.details!r}"


def path_of(method: str) -> str:
    return method if method.startswith("/") else f"/DuoWorkflow/{method}"


def call_unary(channel, method, request: bytes, md, timeout) -> RawOutcome:
    t0 = time.monotonic()
    callable_ = channel.unary_unary(path_of(method), request_serializer=None, response_deserializer=None)
    try:
        response, call = callable_.with_call(request, metadata=md, timeout=timeout)
        return RawOutcome(
            responses=[response],
            initial=call.initial_metadata(),
            trailing=call.trailing_metadata(),
            seconds=time.monotonic() - t0,
        )
    except grpc.RpcError as e:
        return RawOutcome(
            e.code(), e.details(), initial=e.initial_metadata(), trailing=e.trailing_metadata(), error=e, seconds=time.monotonic() - t0
        )


def call_stream(channel, method, requests, md, timeout) -> RawOutcome:
    t0 = time.monotonic()
    callable_ = channel.stream_stream(path_of(method), request_serializer=None, response_deserializer=None)
    call = callable_(iter(list(requests)), metadata=md, timeout=timeout)
    responses = []
    try:
        for response in call:
            responses.append(response)
        return RawOutcome(
            responses=responses, initial=call.initial_metadata(), trailing=call.trailing_metadata(), seconds=time.monotonic() - t0
        )
    except grpc.RpcError as e:
        return RawOutcome(
            e.code(),
            e.details(),
            responses,
            initial=e.initial_metadata(),
            trailing=e.trailing_metadata(),
            error=e,
            seconds=time.monotonic() - t0,
        )


def http2_frames(h, port: int, path: str, metadata, messages, timeout=3.0):
    """One call on a fresh HTTP/2 connection, the way a gRPC client makes it (`metadata` as
    (str, str) pairs, `messages` gRPC-framed); the frames of its stream as the client receives
    them: ("HEADERS", end_stream, {name: value}), ("DATA", length, end_stream), ("RST_STREAM",
    code), or ("GOAWAY",) / ("CLOSED",). For failure messages that say what went over the wire."""
    from hpack import Decoder, Encoder

    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{port}"),
               ("content-type", "application/grpc"), ("te", "trailers")] + [(k, v) for k, v in metadata]
    block = Encoder().encode(headers, huffman=False)
    body = b"".join(b"\0" + len(m).to_bytes(4, "big") + m for m in messages)
    frames = []
    decoder = Decoder()
    try:
        for kind, flags, payload in h.h2_call_frames(port, block, body, timeout):
            if kind in ("GOAWAY", "CLOSED"):
                frames.append((kind,))
                return frames
            if kind == 0x3:
                frames.append(("RST_STREAM", int.from_bytes(payload[:4], "big")))
                return frames
            if kind == 0x0:
                frames.append(("DATA", len(payload), bool(flags & 0x1)))
            elif kind == 0x1:  # no CONTINUATION expected: the header blocks here are small
                decoded = decoder.decode(payload)
                frames.append(("HEADERS", bool(flags & 0x1), {k: v for k, v in decoded if k in (":status", "grpc-status", "grpc-message")}))
            if kind in (0x0, 0x1) and flags & 0x1:
                return frames
    except (TimeoutError, OSError):
        frames.append(("CLOSED",))
    return frames


# --------------------------------------------------------------------------------------------
# The world of these checks
# --------------------------------------------------------------------------------------------


class ContractWorld:
    def __init__(self, h, binary: str, log_dir):
        self.h = h
        self.m = Messages(h.pb)
        self.processes = []
        self.issuer = None
        self.executor = None
        self.iss = None  # what the issuer's discovery document says; read once it is up
        self.big_channels = {}
        self.key = h.Key("interop-2026-gitlab")
        self.authority = h.Key("unused")  # the service derives its own kid
        try:
            self.issuer = h.OidcIssuer("interop-2026", [self.key])
            self.executor = RawExecutor(self.m)
            self.unreachable_port = h.free_port()  # nothing listens there
            common = {
                "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": self.issuer.base,
                "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": "",
                "DUO_WORKFLOW_SELF_SIGNED_JWT__SIGNING_KEY": self.authority.pem_pkcs1(),
            }
            self.relay = self.spawn(
                "relay",
                binary,
                log_dir,
                {
                    **common,
                    "DUO_WORKFLOW_UPSTREAM__URL": self.executor.url,
                    "DUO_WORKFLOW_UPSTREAM__ALLOWED_METHODS": ALLOWED_METHOD,
                    "DUO_WORKFLOW_GRPC_REFLECTION_ENABLED": "true",
                },
            )
            self.configured = self.spawn(
                "configured",
                binary,
                log_dir,
                {
                    **common,
                    "DUO_WORKFLOW_UPSTREAM__URL": f"http://127.0.0.1:{self.unreachable_port}",
                    "DUO_WORKFLOW_UPSTREAM__SERVER_CAPABILITIES": ",".join(CONFIGURED_CAPABILITIES),
                    "DUO_WORKFLOW_USER_TOKENS__DELEGABLE_SCOPES": ",".join(CONFIGURED_DELEGABLE),
                },
            )
        except BaseException:
            self.stop()
            raise

    def spawn(self, name, binary, log_dir, settings):
        p = self.h.ServiceProcess(f"contract-{name}", binary, settings, log_dir)
        self.processes.append(p)
        return p

    def big_channel(self, process):
        """A channel whose own limits are far above 4 MiB."""
        if process.name not in self.big_channels:
            self.big_channels[process.name] = grpc.insecure_channel(
                f"127.0.0.1:{process.port}", options=self.h.CHANNEL_OPTIONS + BIG_OPTIONS
            )
        return self.big_channels[process.name]

    def stop(self):
        for channel in self.big_channels.values():
            channel.close()
        for p in self.processes:
            try:
                p.stop()
            except Exception as e:
                print(f"# could not stop {p.name}: {e}", flush=True)
        for thing in (self.executor, self.issuer):
            if thing is not None:
                try:
                    thing.stop()
                except Exception as e:
                    print(f"# could not stop {thing}: {e}", flush=True)

    # ---- tokens and metadata --------------------------------------------------------------

    def ijwt(self, scopes=ALL_SCOPES, **kw) -> str:
        return self.h.mint(self.key, iss=self.iss, scopes=scopes, **kw)

    def md(self, token, call_id=None, script=None, **kw):
        """GitLab's metadata for `token`, plus the call's id and the executor's script."""
        pairs = list(self.h.metadata(token, **kw))
        pairs.append((CALL_KEY, call_id or new_id()))
        if script:
            pairs.append((SCRIPT_KEY, script))
        return tuple(pairs)


def new_id() -> str:
    return f"call-{uuid.uuid4()}"



def open_stream(relay, md, first: bytes, timeout: float):
    """An ExecuteWorkflow stream of raw messages through `relay`, `first` sent: the queue feeding it
    (put `None` to half-close) and the call."""
    events: "queue.Queue" = queue.Queue()
    events.put(first)

    def requests():
        while True:
            e = events.get()
            if e is None:
                return
            yield e

    callable_ = relay.channel.stream_stream("/DuoWorkflow/ExecuteWorkflow", request_serializer=None, response_deserializer=None)
    return events, callable_(requests(), metadata=md, timeout=timeout)

def md_call_id(md) -> str:
    return dict(md)[CALL_KEY]


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


class Checks:
    def __init__(self, s, h, w: ContractWorld):
        self.s = s
        self.h = h
        self.w = w
        self.m = w.m
        self.x = w.executor
        self.user_tokens = {}

    # ---- helpers --------------------------------------------------------------------------

    def expect(self, condition, why):
        self.h.expect(condition, why)

    def expect_status(self, outcome, code, details=None):
        if outcome.code != code or (details is not None and outcome.details != details):
            want = f"{code.name} {details!r}" if details is not None else code.name
            raise self.h.Failure(f"expected {want}, got {outcome!r}")

    def reached(self, md, method=None):
        """The executor's record of the call `md` made (it must have reached it)."""
        record = self.x.call(md_call_id(md))
        self.expect(record is not None, "the call never reached the executor")
        if method is not None:
            self.h.expect_equal("method at the executor", record.method, method)
        return record

    def not_reached(self, marker):
        touched = self.x.touched_by(marker)
        self.expect(not touched, f"a refused call reached the executor ({[r.method for r in touched]})")

    def call(self, process, method, md, requests=None, timeout=None, big=False):
        """One call of `method` with raw request bytes (a list for streams)."""
        channel = self.w.big_channel(process) if big else process.channel
        if method in STREAMING:
            return call_stream(channel, method, requests or [], md, timeout or self.h.STREAM_TIMEOUT)
        request = requests if requests is not None else self.m.unary_requests().get(method, b"")
        return call_unary(channel, method, request, md, timeout or self.h.RPC_TIMEOUT)

    def generate(self, process, token, definition=None, **md_kw):
        request = self.h.pb.GenerateTokenRequest()
        if definition is not None:
            request.workflowDefinition = definition
        stub = self.h.pb_grpc.DuoWorkflowStub(process.channel)
        return self.h.generate_token(stub, self.w.md(token, **md_kw), request)

    def user_token(self, scopes, definition=None):
        """A user token the relay process minted for a caller holding `scopes`."""
        key = (tuple(scopes), definition)
        if key not in self.user_tokens:
            outcome = self.generate(self.w.relay, self.w.ijwt(scopes=scopes), definition)
            self.expect(outcome.ok, f"GenerateToken for the user token: {outcome!r}")
            self.user_tokens[key] = outcome.value.token
        return self.user_tokens[key]

    # ---- start-up -------------------------------------------------------------------------

    def setup(self) -> bool:
        ok = True
        for p in self.w.processes:
            ok = self.s.check(f"contract.startup.{p.name}.answers_health", p.wait_ready) and ok

        def discovery():
            status, _, body = self.h.http_get(self.w.issuer.base + self.h.OidcIssuer.DISCOVERY)
            self.h.expect_equal("status", status, 200)
            self.w.iss = json.loads(body)["issuer"]
            self.h.expect_equal("the issuer its discovery document states", self.w.iss, self.w.issuer.base)

        ok = self.s.check("contract.startup.issuer_discovery_document", discovery) and ok
        if not ok:
            return False

        def keys(process):
            def check():
                deadline = time.monotonic() + self.h.KEYS_TIMEOUT
                while True:
                    outcome = self.generate(process, self.w.ijwt(scopes=(AGENT,)))
                    if outcome.ok or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                self.expect(outcome.ok, f"a token of the discovered issuer was never accepted: last {outcome!r}")

            return check

        for p in self.w.processes:
            ok = self.s.check(f"contract.startup.{p.name}.issuer_keys_usable", keys(p)) and ok
        return ok

    # ---- C2 -------------------------------------------------------------------------------

    def generate_token_table(self):
        s = self.s
        relay = self.w.relay

        def allowed(scopes, definition=None):
            def check():
                outcome = self.generate(relay, self.w.ijwt(scopes=scopes), definition)
                self.h.expect_ok(outcome)
                self.expect(outcome.value.token != "minted-by-the-executor", "GenerateToken was relayed to the executor")

            return check

        def denied(token_fn, definition=None):
            def check():
                outcome = self.generate(relay, token_fn(), definition)
                self.expect_status(outcome, PERMISSION_DENIED, DENIED_GENERATE)

            return check

        s.check("c2.generate_token.chat.duo_chat", allowed((CHAT,), "chat"))
        s.check("c2.generate_token.chat.agent_platform_refused", denied(lambda: self.w.ijwt(scopes=(AGENT, EXECUTE, FILES)), "chat"))
        s.check("c2.generate_token.chat.execute_workflow_refused", denied(lambda: self.w.ijwt(scopes=(EXECUTE,)), "chat"))
        s.check("c2.generate_token.no_flow.duo_agent_platform", allowed((AGENT,)))
        s.check("c2.generate_token.no_flow.duo_workflow_execute_workflow", allowed((EXECUTE,)))
        s.check("c2.generate_token.no_flow.duo_workflow_generate_token_2024", allowed((GENERATE,)))
        s.check("c2.generate_token.software_development.duo_agent_platform", allowed((AGENT,), "software_development"))
        s.check("c2.generate_token.catalog_flow.duo_agent_platform", allowed((AGENT,), "fix_pipeline/v1"))
        s.check("c2.generate_token.empty_definition.duo_workflow_execute_workflow", allowed((EXECUTE,), ""))
        s.check("c2.generate_token.no_flow.duo_chat_only_refused", denied(lambda: self.w.ijwt(scopes=(CHAT,))))
        s.check("c2.generate_token.no_flow.include_file_context_only_refused", denied(lambda: self.w.ijwt(scopes=(FILES,))))
        s.check("c2.generate_token.no_flow.no_scopes_refused", denied(lambda: self.w.ijwt(scopes=())))
        s.check(
            "c2.generate_token.software_development.duo_chat_only_refused",
            denied(lambda: self.w.ijwt(scopes=(CHAT, FILES)), "software_development"),
        )
        s.check("c2.generate_token.user_token_refused", denied(lambda: self.user_token(ALL_SCOPES)))
        s.check("c2.generate_token.user_token_refused.chat", denied(lambda: self.user_token((CHAT,), "chat"), "chat"))
        s.check(
            "c2.generate_token.never_relayed",
            lambda: self.expect("GenerateToken" not in self.x.methods_seen(), "the executor received a GenerateToken call"),
        )

    def execute_workflow_table(self):
        s = self.s
        relay = self.w.relay
        m = self.m

        def run(token, fields, expect_code, details=None):
            def check():
                call_id = new_id()
                md = self.w.md(token() if callable(token) else token, call_id=call_id)
                first = m.start_event(call_id, **fields)
                outcome = self.call(relay, "ExecuteWorkflow", md, [first])
                if expect_code == OK:
                    self.h.expect_ok(outcome)
                    record = self.reached(md, "ExecuteWorkflow")
                    self.h.expect_equal("first message at the executor", record.requests[:1], [first])
                    self.expect(self.x.touched_by(call_id), "the executor's record does not find a call that reached it")
                else:
                    self.expect_status(outcome, expect_code, details)
                    self.not_reached(call_id)

            return check

        ijwt = self.w.ijwt
        agent = lambda: ijwt(scopes=(AGENT,))  # noqa: E731
        execute = lambda: ijwt(scopes=(EXECUTE,))  # noqa: E731
        chat_only = lambda: ijwt(scopes=(CHAT, FILES))  # noqa: E731
        everything = lambda: ijwt(scopes=ALL_SCOPES + (GENERATE,))  # noqa: E731
        catalog = dict(flowConfigId="fix_pipeline", flowConfigSchemaVersion="v1", flowVersion="1.2.0")
        inline = dict(flowConfig=struct(FLOW_CONFIG))
        denied = lambda flow: f"Unauthorized to execute {flow}"  # noqa: E731

        rows = [
            ("legacy_definition.duo_agent_platform", agent, dict(workflowDefinition="software_development"), OK, None),
            ("legacy_definition.duo_workflow_execute_workflow", execute, dict(workflowDefinition="developer/v1"), OK, None),
            ("legacy_definition.duo_chat_only_refused", chat_only, dict(workflowDefinition="developer/v1"), PERMISSION_DENIED, denied("developer/v1")),
            ("default_flow.duo_agent_platform", agent, {}, OK, None),
            ("default_flow.duo_chat_only_refused", chat_only, {}, PERMISSION_DENIED, denied("software_development")),
            ("chat.duo_chat", chat_only, dict(workflowDefinition="chat"), OK, None),
            ("chat.duo_agent_platform_refused", lambda: ijwt(scopes=(AGENT, EXECUTE, FILES)), dict(workflowDefinition="chat"), PERMISSION_DENIED, denied("chat")),
            ("chat.duo_workflow_execute_workflow_refused", execute, dict(workflowDefinition="chat"), PERMISSION_DENIED, denied("chat")),
            ("catalog_flow.duo_agent_platform", agent, catalog, OK, None),
            ("catalog_flow.duo_chat_only_refused", chat_only, catalog, PERMISSION_DENIED, denied("fix_pipeline/v1")),
            (
                "catalog_flow.ignores_workflow_definition",
                chat_only,
                dict(catalog, workflowDefinition="chat"),
                PERMISSION_DENIED,
                denied("fix_pipeline/v1"),
            ),
            ("catalog_flow.other_schema_version", agent, dict(catalog, flowConfigSchemaVersion="v2"), OK, None),
            ("inline_flow_config.empty_definition.duo_agent_platform", agent, inline, OK, None),
            ("inline_flow_config.empty_definition.duo_chat_only_refused", chat_only, inline, PERMISSION_DENIED, "Unauthorized to execute workflow"),
            ("inline_flow_config.chat_definition.duo_chat", chat_only, dict(inline, workflowDefinition="chat"), OK, None),
            (
                "inline_flow_config.named_definition.duo_chat_only_refused",
                chat_only,
                dict(inline, workflowDefinition="my_flow"),
                PERMISSION_DENIED,
                denied("my_flow"),
            ),
            ("inline_flow_config.with_flow_version", agent, dict(inline, flowVersion="1.0.0"), OK, None),
            ("invalid.config_id_and_config", everything, dict(catalog, **inline), INVALID_ARGUMENT, MUTUALLY_EXCLUSIVE),
            ("invalid.config_id_without_schema_version", everything, dict(flowConfigId="fix_pipeline", flowVersion="1.2.0"), INVALID_ARGUMENT, NEEDS_SCHEMA),
            (
                "invalid.config_id_with_empty_schema_version",
                everything,
                dict(catalog, flowConfigSchemaVersion=""),
                INVALID_ARGUMENT,
                NEEDS_SCHEMA,
            ),
            ("invalid.config_id_without_version", everything, dict(flowConfigId="fix_pipeline", flowConfigSchemaVersion="v1"), INVALID_ARGUMENT, NEEDS_VERSION),
            ("invalid.version_without_config_id", everything, dict(flowVersion="1.2.0", workflowDefinition="chat"), INVALID_ARGUMENT, NEEDS_ID),
            (
                "invalid.user_token_too",
                lambda: self.user_token(ALL_SCOPES),
                dict(flowVersion="1.2.0"),
                INVALID_ARGUMENT,
                NEEDS_ID,
            ),
            ("experimental.duo_planner_read_as_v1", chat_only, dict(workflowDefinition="duo_planner/experimental"), PERMISSION_DENIED, denied("duo_planner/v1")),
            (
                "experimental.security_analyst_agent_read_as_v1",
                chat_only,
                dict(workflowDefinition="security_analyst_agent/experimental"),
                PERMISSION_DENIED,
                denied("security_analyst_agent/v1"),
            ),
            (
                "experimental.catalog_duo_planner_read_as_v1",
                chat_only,
                dict(flowConfigId="duo_planner", flowConfigSchemaVersion="experimental", flowVersion="1.0.0"),
                PERMISSION_DENIED,
                denied("duo_planner/v1"),
            ),
            ("experimental.duo_planner_relayed_as_sent", agent, dict(workflowDefinition="duo_planner/experimental"), OK, None),
            ("user_token.all_scopes", lambda: self.user_token(ALL_SCOPES), {}, OK, None),
            ("user_token.catalog_flow", lambda: self.user_token((AGENT,)), catalog, OK, None),
            ("user_token.duo_chat.chat", lambda: self.user_token((CHAT,), "chat"), dict(workflowDefinition="chat"), OK, None),
            (
                "user_token.duo_chat.default_flow_refused",
                lambda: self.user_token((CHAT,), "chat"),
                {},
                PERMISSION_DENIED,
                denied("software_development"),
            ),
        ]
        for name, token, fields, code, details in rows:
            s.check(f"c2.execute_workflow.{name}", run(token, fields, code, details))

        def closed_before_first_message():
            md = self.w.md(ijwt(scopes=(CHAT,)))
            outcome = self.call(relay, "ExecuteWorkflow", md, [])
            self.h.expect_ok(outcome)
            record = self.reached(md, "ExecuteWorkflow")
            self.h.expect_equal("messages at the executor", record.requests, [])
            self.h.expect_equal("actions back", outcome.responses, self.x.actions)

        s.check("c2.execute_workflow.closed_before_first_message_relayed", closed_before_first_message)

        def unauthenticated():
            call_id = new_id()
            outcome = self.call(relay, "ExecuteWorkflow", self.w.md(None, call_id=call_id), [m.start_event(call_id)])
            self.expect_status(outcome, UNAUTHENTICATED, self.h.NO_AUTHORIZATION)
            self.not_reached(call_id)

        s.check("c2.execute_workflow.no_token_refused", unauthenticated)

    def track_and_listing_table(self):
        s = self.s
        relay = self.w.relay
        ijwt = self.w.ijwt

        def track(token, code, details=None):
            def check():
                md = self.w.md(token())
                events = [b for _, b in self.m.track_events()]
                outcome = self.call(relay, "TrackSelfHostedExecuteWorkflow", md, events)
                if code == OK:
                    self.h.expect_ok(outcome)
                    self.reached(md, "TrackSelfHostedExecuteWorkflow")
                else:
                    self.expect_status(outcome, code, details)
                    self.not_reached(md_call_id(md))

            return check

        s.check("c2.track_self_hosted.duo_agent_platform", track(lambda: ijwt(scopes=(AGENT,)), OK))
        s.check("c2.track_self_hosted.execute_workflow_refused", track(lambda: ijwt(scopes=(EXECUTE, CHAT, FILES, GENERATE)), PERMISSION_DENIED, DENIED_TRACK))
        s.check("c2.track_self_hosted.no_scopes_refused", track(lambda: ijwt(scopes=()), PERMISSION_DENIED, DENIED_TRACK))
        s.check("c2.track_self_hosted.user_token_refused", track(lambda: self.user_token(ALL_SCOPES), PERMISSION_DENIED, DENIED_TRACK))
        s.check("c2.track_self_hosted.no_token_refused", track(lambda: None, UNAUTHENTICATED, self.h.NO_AUTHORIZATION))

        for method in LISTING:

            def listed(token, method=method):
                def check():
                    md = self.w.md(token())
                    outcome = self.call(relay, method, md)
                    self.h.expect_ok(outcome)
                    self.reached(md, method)
                    self.h.expect_equal("response", outcome.responses, [self.m.unary_responses()[method]])

                return check

            def refused(method=method):
                md = self.w.md(None)
                self.expect_status(self.call(relay, method, md), UNAUTHENTICATED, self.h.NO_AUTHORIZATION)
                self.not_reached(md_call_id(md))

            def forbidden(method=method):
                md = self.w.md(self.h.mint(self.w.authority, iss=self.w.iss, scopes=ALL_SCOPES))  # a key the issuer never published
                self.expect_status(self.call(relay, method, md), UNAUTHENTICATED, self.h.FORBIDDEN)
                self.not_reached(md_call_id(md))

            s.check(f"c2.{method}.instance_token_without_scopes", listed(lambda: ijwt(scopes=())))
            s.check(f"c2.{method}.user_token", listed(lambda: self.user_token((CHAT,), "chat")))
            s.check(f"c2.{method}.no_token_refused", refused)
            s.check(f"c2.{method}.bad_token_refused", forbidden)

    def open_and_other_methods(self):
        s = self.s
        relay = self.w.relay
        h = self.h

        s.check("c2.health.without_token", lambda: h.expect_equal("health", h.health(relay.channel).value, "SERVING"))
        s.check(
            "c2.health.duo_workflow_without_token",
            lambda: h.expect_equal("health", h.health(relay.channel, "DuoWorkflow").value, "SERVING"),
        )

        for label, method in (("unknown_rpc", UNKNOWN_RPC), ("other_service", NOT_ALLOWED_METHOD), ("health_v2", "/grpc.health.v2.Health/Check")):

            def unknown(method=method, token=None):
                md = self.w.md(token() if token else None)
                outcome = call_unary(relay.channel, method, b"", md, h.RPC_TIMEOUT)
                self.expect_status(outcome, UNIMPLEMENTED, METHOD_NOT_FOUND)
                self.not_reached(md_call_id(md))

            s.check(f"c2.unimplemented.{label}.without_token", unknown)
            s.check(
                f"c2.unimplemented.{label}.with_good_token",
                lambda method=method: unknown(method, lambda: self.w.ijwt(scopes=ALL_SCOPES)),
            )

        def allowed_method(token_fn, code, details=None):
            def check():
                md = self.w.md(token_fn())
                request = self.m.unary_requests()[ALLOWED_METHOD]
                outcome = call_unary(relay.channel, ALLOWED_METHOD, request, md, h.RPC_TIMEOUT)
                if code == OK:
                    h.expect_ok(outcome)
                    record = self.reached(md, ALLOWED_METHOD)
                    h.expect_equal("request bytes at the executor", record.requests, [request])
                    h.expect_equal("response bytes", outcome.responses, [self.m.unary_responses()[ALLOWED_METHOD]])
                else:
                    self.expect_status(outcome, code, details)
                    self.not_reached(md_call_id(md))

            return check

        s.check("c2.allowed_method.instance_token_without_scopes", allowed_method(lambda: self.w.ijwt(scopes=()), OK))
        s.check("c2.allowed_method.user_token", allowed_method(lambda: self.user_token((CHAT,), "chat"), OK))
        s.check("c2.allowed_method.no_token_refused", allowed_method(lambda: None, UNAUTHENTICATED, h.NO_AUTHORIZATION))
        s.check(
            "c2.allowed_method.bad_token_refused",
            allowed_method(lambda: h.mint(self.w.authority, iss=self.w.iss), UNAUTHENTICATED, h.FORBIDDEN),
        )

    def reflection(self):
        s = self.s
        relay = self.w.relay
        h = self.h

        def services():
            db = ProtoReflectionDescriptorDatabase(relay.channel)
            names = set(db.get_services())
            for want in ("DuoWorkflow", "grpc.health.v1.Health"):
                self.expect(want in names, f"{want} not listed by reflection: {sorted(names)}")

        s.check("c2.reflection.enabled.v1alpha_lists_services_without_token", services)

        def file_descriptor():
            db = ProtoReflectionDescriptorDatabase(relay.channel)
            fd = db.FindFileContainingSymbol("DuoWorkflow")
            h.expect_equal("package", fd.package, "")
            service = [sv for sv in fd.service if sv.name == "DuoWorkflow"]
            self.expect(service, f"DuoWorkflow not in {fd.name}: {[sv.name for sv in fd.service]}")
            methods = {mm.name: mm for mm in service[0].method}
            h.expect_equal("methods", sorted(methods), sorted(RPCS))
            for name in RPCS:
                streaming = name in STREAMING
                mm = methods[name]
                h.expect_equal(f"{name} streaming", (mm.client_streaming, mm.server_streaming), (streaming, streaming))
            h.expect_equal("ExecuteWorkflow input", methods["ExecuteWorkflow"].input_type, ".ClientEvent")
            h.expect_equal("ExecuteWorkflow output", methods["ExecuteWorkflow"].output_type, ".Action")
            # The descriptor resolves completely (google/protobuf/struct.proto included) ...
            pool = descriptor_pool.DescriptorPool(db)
            resolved = pool.FindServiceByName("DuoWorkflow")
            h.expect_equal("resolved methods", sorted(mm.name for mm in resolved.methods), sorted(RPCS))
            # ... and says what the generated stubs say.
            start = pool.FindMessageTypeByName("StartWorkflowRequest")
            ours = h.pb.StartWorkflowRequest.DESCRIPTOR
            h.expect_equal(
                "StartWorkflowRequest fields",
                sorted((f.number, f.name) for f in start.fields),
                sorted((f.number, f.name) for f in ours.fields),
            )

        s.check("c2.reflection.enabled.duo_workflow_file_descriptor", file_descriptor)

        def v1_list(process, expect_ok):
            def check():
                request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
                outcome = call_stream(
                    process.channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", [request], (), h.RPC_TIMEOUT
                )
                if expect_ok:
                    h.expect_ok(outcome)
                    response = reflection_pb2.ServerReflectionResponse.FromString(outcome.responses[0])
                    names = {sv.name for sv in response.list_services_response.service}
                    self.expect("DuoWorkflow" in names, f"DuoWorkflow not listed by reflection v1: {sorted(names)}")
                else:
                    self.expect_status(outcome, UNIMPLEMENTED, METHOD_NOT_FOUND)

            return check

        s.check("c2.reflection.enabled.v1_lists_services_without_token", v1_list(relay, True))
        s.check("c2.reflection.disabled.v1_unimplemented", v1_list(self.w.configured, False))

        def v1alpha_disabled():
            stub = reflection_pb2_grpc.ServerReflectionStub(self.w.configured.channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            try:
                list(stub.ServerReflectionInfo(iter([request]), timeout=h.RPC_TIMEOUT))
                raise h.Failure("reflection answered on a process where it is not enabled")
            except grpc.RpcError as e:
                self.expect_status(RawOutcome(e.code(), e.details()), UNIMPLEMENTED, METHOD_NOT_FOUND)

        s.check("c2.reflection.disabled.v1alpha_unimplemented", v1alpha_disabled)

    # ---- C4: bytes ------------------------------------------------------------------------

    def byte_exact(self):
        s = self.s
        relay = self.w.relay
        h = self.h

        def compare(what, got, sent_labelled):
            labels = [label for label, _ in sent_labelled]
            sent = [b for _, b in sent_labelled]
            if got == sent:
                return
            if len(got) != len(sent):
                raise h.Failure(f"{what}: {len(sent)} messages sent, {len(got)} arrived")
            differing = [f"{label} ({len(a)} -> {len(b)} bytes)" for label, a, b in zip(labels, sent, got) if a != b]
            raise h.Failure(f"{what}: changed on the way: {differing}")

        def stream(label, events_fn, token_fn):
            def check():
                call_id = new_id()
                events = events_fn(call_id)
                md = self.w.md(token_fn(), call_id=call_id)
                outcome = self.call(relay, "ExecuteWorkflow", md, [b for _, b in events])
                h.expect_ok(outcome)
                record = self.reached(md, "ExecuteWorkflow")
                compare("client events at the executor", record.requests, events)
                compare("actions at the client", outcome.responses, self.m.actions())

            s.check(f"c4.bytes.execute_workflow.{label}", check)

        stream("every_client_event_and_action.instance_token", self.m.client_events, lambda: self.w.ijwt(scopes=(AGENT,)))
        stream("every_client_event_and_action.user_token", self.m.client_events, lambda: self.user_token((AGENT,)))
        stream("inline_flow_config_first", self.m.inline_flow_events, lambda: self.w.ijwt(scopes=(EXECUTE,)))

        def client_event_coverage():
            defined = [f.name for f in h.pb.ClientEvent.DESCRIPTOR.oneofs_by_name["response"].fields]
            labels = " ".join(label for label, _ in self.m.client_events("x") + self.m.inline_flow_events("x"))
            missing = [name for name in defined if name not in labels]
            self.expect(not missing, f"ClientEvent variants not sent: {missing}")
            start_fields = {f.name for f in h.pb.StartWorkflowRequest.DESCRIPTOR.fields}
            full = self.m.start(workflow_id="x", every_field=True)
            unset = sorted(f for f in start_fields if not (full.HasField(f) if h.pb.StartWorkflowRequest.DESCRIPTOR.fields_by_name[f].has_presence else getattr(full, f)))
            self.expect(not unset, f"StartWorkflowRequest fields never set: {unset}")

        s.check("c4.bytes.every_client_event_variant_and_start_field_covered", client_event_coverage)

        def track():
            md = self.w.md(self.w.ijwt(scopes=(AGENT,)))
            events = self.m.track_events()
            outcome = self.call(relay, "TrackSelfHostedExecuteWorkflow", md, [b for _, b in events])
            h.expect_ok(outcome)
            record = self.reached(md, "TrackSelfHostedExecuteWorkflow")
            compare("events at the executor", record.requests, events)
            compare("replies at the client", outcome.responses, list(zip(["1", "2", "3"], self.m.track_replies())))

        s.check("c4.bytes.track_self_hosted_both_ways", track)

        def gzip_client():
            """A client compressing its messages (grpc-encoding: gzip): the flow is still read from the
            first message, and the executor gets the same messages."""
            channel = grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=h.CHANNEL_OPTIONS, compression=grpc.Compression.Gzip)
            try:
                call_id = new_id()
                denied_md = self.w.md(self.w.ijwt(scopes=(CHAT,)), call_id=call_id)
                refused = call_stream(channel, "ExecuteWorkflow", [self.m.start_event(call_id)], denied_md, h.STREAM_TIMEOUT)
                self.expect_status(refused, PERMISSION_DENIED, "Unauthorized to execute software_development")
                events = self.m.client_events(new_id())
                md = self.w.md(self.w.ijwt(scopes=(AGENT,)))
                outcome = call_stream(channel, "ExecuteWorkflow", [b for _, b in events], md, h.STREAM_TIMEOUT)
                h.expect_ok(outcome)
                compare("client events at the executor", self.reached(md).requests, events)
                compare("actions at the client", outcome.responses, self.m.actions())
            finally:
                channel.close()

        s.check("c4.bytes.gzip_compressing_client", gzip_client)

        for method in LISTING:

            def unary(method=method):
                md = self.w.md(self.w.ijwt(scopes=()))
                request = self.m.unary_requests()[method]
                outcome = self.call(relay, method, md, request)
                h.expect_ok(outcome)
                record = self.reached(md, method)
                h.expect_equal("request bytes at the executor", record.requests, [request])
                h.expect_equal("response bytes at the client", outcome.responses, [self.m.unary_responses()[method]])

            s.check(f"c4.bytes.{method}_both_ways", unary)

    # ---- C4: metadata, status -------------------------------------------------------------

    def metadata_and_status(self):
        s = self.s
        relay = self.w.relay
        h = self.h
        binary_value = b"\x00\x01\x02\xff binary metadata"
        extra = (
            ("x-gitlab-enabled-feature-flags", "duo_agentic_chat,expanded_ai_logging"),
            ("x-gitlab-language-server-version", "8.12.0"),
            ("x-gitlab-client-type", "node-grpc"),
            ("x-interop-custom", "custom value, with; punctuation"),
            ("x-interop-trace-bin", binary_value),
        )

        def forwarded(method, token_fn):
            def check():
                md = self.w.md(token_fn(), request_id=f"req-{uuid.uuid4()}") + extra
                requests = None
                if method == "ExecuteWorkflow":
                    requests = [self.m.start_event(md_call_id(md))]
                elif method == "TrackSelfHostedExecuteWorkflow":
                    requests = [b for _, b in self.m.track_events()]
                outcome = self.call(relay, method, md, requests)
                h.expect_ok(outcome)
                record = self.reached(md)
                for key, value in md:
                    got = [v for k, v in record.metadata if k == key]
                    h.expect_equal(f"executor's {key}", got, [value])

            return check

        s.check("c4.metadata.to_executor.execute_workflow", forwarded("ExecuteWorkflow", lambda: self.w.ijwt(scopes=(AGENT,))))
        s.check("c4.metadata.to_executor.execute_workflow_user_token", forwarded("ExecuteWorkflow", lambda: self.user_token((AGENT,))))
        s.check("c4.metadata.to_executor.track_self_hosted", forwarded("TrackSelfHostedExecuteWorkflow", lambda: self.w.ijwt(scopes=(AGENT,))))
        for method in LISTING:
            s.check(f"c4.metadata.to_executor.{method}", forwarded(method, lambda: self.w.ijwt(scopes=())))
        s.check("c4.metadata.to_executor.allowed_method", forwarded(ALLOWED_METHOD, lambda: self.w.ijwt(scopes=())))

        def expect_entries(what, got, want):
            got = list(got)
            for key, value in want:
                values = [v for k, v in got if k == key]
                h.expect_equal(f"{what} {key}", values, [value])

        def rich_status(outcome):
            self.expect_status(outcome, FAILED_PRECONDITION, RawExecutor.STATUS_DETAILS)
            expect_entries("response header", outcome.initial, RawExecutor.HEADERS)
            expect_entries("trailer", outcome.trailing, RawExecutor.TRAILERS)
            expect_entries("trailer", outcome.trailing, (("grpc-status-details-bin", self.x.rich_bytes),))
            status = rpc_status.from_call(outcome.error)
            self.expect(status is not None, "no google.rpc.Status in the trailers")
            h.expect_equal("google.rpc.Status", status.SerializeToString(), self.x.rich_bytes)
            info = error_details_pb2.ErrorInfo()
            self.expect(status.details[0].Unpack(info) and info.reason == "INTEROP_QUOTA", f"ErrorInfo: {status.details}")

        def stream_status():
            md = self.w.md(self.w.ijwt(scopes=(AGENT,)), script="status")
            outcome = self.call(relay, "ExecuteWorkflow", md, [self.m.start_event(md_call_id(md))])
            rich_status(outcome)
            h.expect_equal("actions before the abort", outcome.responses, self.x.actions[:1])

        s.check("c4.status.execute_workflow_rich_status_headers_trailers", stream_status)

        def unary_status(method):
            def check():
                md = self.w.md(self.w.ijwt(scopes=()), script="status")
                rich_status(self.call(relay, method, md))

            return check

        s.check("c4.status.list_flows_rich_status_headers_trailers", unary_status("ListFlows"))

        def trailers_only(method):
            """The executor refuses before answering anything (Trailers-Only): its status, details,
            trailers and grpc-status-details-bin reach the client all the same."""

            def check():
                token = self.w.ijwt(scopes=(AGENT,))
                md = self.w.md(token, script="abort")
                requests = None
                if method == "ExecuteWorkflow":
                    requests = [self.m.start_event(md_call_id(md))]
                elif method == "TrackSelfHostedExecuteWorkflow":
                    requests = [b for _, b in self.m.track_events()][:1]
                outcome = self.call(relay, method, md, requests)
                try:
                    self.expect_status(outcome, FAILED_PRECONDITION, RawExecutor.STATUS_DETAILS)
                    expect_entries("trailer", outcome.trailing, RawExecutor.TRAILERS)
                    expect_entries("trailer", outcome.trailing, (("grpc-status-details-bin", self.x.rich_bytes),))
                except h.Failure as e:
                    md2 = [(k, v) for k, v in self.w.md(token, script="abort") if not k.endswith("-bin")]
                    raw = requests if requests is not None else [self.m.unary_requests()[method]]
                    frames = http2_frames(h, relay.port, path_of(method), md2, raw)
                    direct = http2_frames(h, self.x.port, path_of(method), md2, raw)
                    raise h.Failure(f"{e}; frames from the service: {frames}; from the executor itself: {direct}")

            return check

        for method in ("ExecuteWorkflow", "ListTools", "TrackSelfHostedExecuteWorkflow"):
            s.check(f"c4.status.trailers_only.{method}", trailers_only(method))

        def ok_without_messages(method, requests_fn):
            """A stream the executor ends OK without a message (grpcio sends it Trailers-Only)."""

            def check():
                token = self.w.ijwt(scopes=(AGENT,))
                md = self.w.md(token, script="empty")
                requests = requests_fn(md)
                outcome = self.call(relay, method, md, requests)
                if not outcome.ok:
                    md2 = [(k, v) for k, v in self.w.md(token, script="empty")]
                    frames = http2_frames(h, relay.port, path_of(method), md2, requests)
                    direct = http2_frames(h, self.x.port, path_of(method), md2, requests)
                    raise h.Failure(f"expected OK, got {outcome!r}; frames from the service: {frames}; from the executor itself: {direct}")
                h.expect_equal("messages", outcome.responses, [])

            return check

        s.check(
            "c4.status.trailers_only_ok.ExecuteWorkflow_without_actions",
            ok_without_messages("ExecuteWorkflow", lambda md: [self.m.start_event(md_call_id(md))]),
        )
        s.check(
            "c4.status.trailers_only_ok.TrackSelfHostedExecuteWorkflow_without_events",
            ok_without_messages("TrackSelfHostedExecuteWorkflow", lambda md: []),
        )

        def early_end():
            """The executor ends the workflow while the client's half of the stream is still open."""
            md = self.w.md(self.w.ijwt(scopes=(AGENT,)), script="early-end")
            events, call = open_stream(relay, md, self.m.start_event(md_call_id(md)), h.STREAM_TIMEOUT)
            try:
                got = list(call)
            except grpc.RpcError as e:
                raise h.Failure(f"expected OK, got {e.code().name} {e.details()!r}")
            finally:
                events.put(None)
            h.expect_equal("status", call.code(), OK)
            h.expect_equal("actions", got, self.x.actions)

        s.check("c4.status.executor_ends_before_client_half_closes", early_end)
        s.check("c4.status.validate_flow_config_rich_status_headers_trailers", unary_status("ValidateFlowConfig"))

        def headers_ok(method, requests=None):
            def check():
                md = self.w.md(self.w.ijwt(scopes=(AGENT,)), script="headers-ok")
                reqs = requests(md) if requests else None
                outcome = self.call(relay, method, md, reqs)
                h.expect_ok(outcome)
                expect_entries("response header", outcome.initial, RawExecutor.HEADERS)
                expect_entries("trailer", outcome.trailing, RawExecutor.TRAILERS)

            return check

        s.check("c4.status.list_tools_ok_with_headers_and_trailers", headers_ok("ListTools"))
        s.check(
            "c4.status.execute_workflow_ok_with_headers_and_trailers",
            headers_ok("ExecuteWorkflow", lambda md: [self.m.start_event(md_call_id(md))]),
        )
        s.check(
            "c4.status.track_self_hosted_ok_with_headers_and_trailers",
            headers_ok("TrackSelfHostedExecuteWorkflow", lambda md: [b for _, b in self.m.track_events()]),
        )

    # ---- C4: deadlines, cancellation ------------------------------------------------------

    def deadlines_and_cancellation(self):
        s = self.s
        relay = self.w.relay
        h = self.h

        def deadline(method):
            def check():
                md = self.w.md(self.w.ijwt(scopes=(AGENT,)), script="wait")
                requests = [self.m.start_event(md_call_id(md))] if method == "ExecuteWorkflow" else None
                sent_at = time.monotonic()
                outcome = self.call(relay, method, md, requests, timeout=DELAY)
                self.expect_status(outcome, DEADLINE_EXCEEDED)
                self.expect(outcome.seconds < DELAY + 2.0, f"DEADLINE_EXCEEDED after {outcome.seconds:.2f}s (deadline {DELAY}s)")
                record = self.reached(md, method)
                remaining = record.time_remaining
                self.expect(remaining is not None, "the executor received no deadline (grpc-timeout)")
                # gRPC writes grpc-timeout rounded up, and the executor's clock starts later: a little slack.
                self.expect(0 < remaining <= DELAY * 1.05, f"the executor's deadline is {remaining:.3f}s, the client's {DELAY}s")
                record.done.wait(OBSERVE_TIMEOUT)
                seen = record.inactive_at or record.ended_at
                self.expect(seen is not None, f"the executor never saw the call end within {OBSERVE_TIMEOUT}s")
                lag = seen - (sent_at + DELAY)
                print(f"# deadline ({method}): executor got {remaining:.3f}s of {DELAY}s, saw the end {lag:+.3f}s after the client's deadline", flush=True)
                self.expect(lag <= OBSERVE_TIMEOUT, f"the executor saw the end {lag:.2f}s after the client's deadline")

            return check

        def run_concurrently(checks):
            """Runs the given checks' bodies in parallel threads (each waits about DELAY); reports each."""
            results = {}

            def body(name, fn):
                try:
                    fn()
                    results[name] = None
                except Exception as e:  # reported below, in order
                    results[name] = e

            threads = [threading.Thread(target=body, args=(name, fn), daemon=True) for name, fn in checks]
            for t in threads:
                t.start()
            for t in threads:
                t.join(DELAY + OBSERVE_TIMEOUT + 5)
            for name, _ in checks:

                def report(name=name):
                    if name not in results:
                        raise h.Failure("did not finish")
                    if results[name] is not None:
                        raise results[name]

                s.check(name, report)

        def cancel_stream():
            md = self.w.md(self.w.ijwt(scopes=(AGENT,)), script="hold")
            events, call = open_stream(relay, md, self.m.start_event(md_call_id(md)), 8.0)
            try:
                first = next(call)
                h.expect_equal("first action", first, self.x.actions[0])
                record = self.reached(md, "ExecuteWorkflow")
                self.expect(record.ended_at is None, "the executor's call ended before the client cancelled")
                cancelled_at = time.monotonic()
                call.cancel()
            finally:
                events.put(None)
            self.expect(call.code() == grpc.StatusCode.CANCELLED, f"client call: {call.code()}")
            record.done.wait(OBSERVE_TIMEOUT)
            seen = record.inactive_at or record.ended_at
            self.expect(seen is not None, f"the executor never saw the cancellation within {OBSERVE_TIMEOUT}s")
            print(f"# cancellation (ExecuteWorkflow): the executor saw it {seen - cancelled_at:.3f}s after the client cancelled", flush=True)

        def cancel_unary():
            md = self.w.md(self.w.ijwt(scopes=()), script="wait")
            callable_ = relay.channel.unary_unary("/DuoWorkflow/ValidateFlowConfig", request_serializer=None, response_deserializer=None)
            future = callable_.future(self.m.unary_requests()["ValidateFlowConfig"], metadata=md, timeout=8.0)
            record = self.reached(md, "ValidateFlowConfig")
            self.expect(record.ended_at is None, "the executor's call ended before the client cancelled")
            cancelled_at = time.monotonic()
            future.cancel()
            record.done.wait(OBSERVE_TIMEOUT)
            seen = record.inactive_at or record.ended_at
            self.expect(seen is not None, f"the executor never saw the cancellation within {OBSERVE_TIMEOUT}s")
            print(f"# cancellation (ValidateFlowConfig): the executor saw it {seen - cancelled_at:.3f}s after the client cancelled", flush=True)

        run_concurrently(
            [
                ("c4.deadline.execute_workflow", deadline("ExecuteWorkflow")),
                ("c4.deadline.list_tools", deadline("ListTools")),
                ("c4.cancel.execute_workflow_mid_stream", cancel_stream),
                ("c4.cancel.validate_flow_config", cancel_unary),
            ]
        )

    # ---- C4: message sizes ----------------------------------------------------------------

    def sizes(self):
        s = self.s
        relay = self.w.relay
        h = self.h
        over = MIB4 + 1

        def response(method, size):
            def check():
                md = self.w.md(self.w.ijwt(scopes=(AGENT,)), script=f"big:{size}")
                requests = [self.m.start_event(md_call_id(md))] if method == "ExecuteWorkflow" else None
                outcome = self.call(relay, method, md, requests, timeout=10.0, big=True)
                if size <= MIB4:
                    h.expect_ok(outcome)
                    want = self.m.big_action(size) if method == "ExecuteWorkflow" else padded(b"", size)
                    self.expect(outcome.responses == [want], f"the {size}-byte message did not arrive intact ({[len(r) for r in outcome.responses]})")
                else:
                    self.expect_status(outcome, RESOURCE_EXHAUSTED)
                    self.expect(not outcome.responses, f"{len(outcome.responses)} oversized messages reached the client")

            return check

        def request(method, size, first=False):
            def check():
                call_id = new_id()
                md = self.w.md(self.w.ijwt(scopes=(AGENT,)), call_id=call_id)
                if method == "ExecuteWorkflow":
                    start = self.m.start_event(call_id)
                    big = padded(start, size) if first else self.m.big_event(size)
                    requests = [big] if first else [start, big]
                elif method == "GenerateToken":
                    requests = padded(h.pb.GenerateTokenRequest(workflowDefinition="software_development").SerializeToString(), size)
                else:
                    requests = padded(self.m.unary_requests()[method], size)
                outcome = self.call(relay, method, md, requests, timeout=10.0, big=True)
                record = self.x.call(call_id, timeout=0.2)
                if size <= MIB4:
                    h.expect_ok(outcome)
                    if method != "GenerateToken":
                        self.expect(record is not None, "the call never reached the executor")
                        sent = requests if isinstance(requests, list) else [requests]
                        self.expect(record.requests == sent, f"the executor got {[len(r) for r in record.requests]} bytes")
                else:
                    self.expect_status(outcome, RESOURCE_EXHAUSTED)
                    got = [len(r) for r in record.requests] if record else []
                    self.expect(size not in got, f"the oversized message reached the executor ({got})")

            return check

        s.check("c4.size.execute_workflow.action_of_4MiB_passes", response("ExecuteWorkflow", MIB4))
        s.check("c4.size.execute_workflow.action_over_4MiB_resource_exhausted", response("ExecuteWorkflow", over))
        s.check("c4.size.list_tools.response_of_4MiB_passes", response("ListTools", MIB4))
        s.check("c4.size.list_tools.response_over_4MiB_resource_exhausted", response("ListTools", over))
        s.check("c4.size.execute_workflow.client_event_of_4MiB_passes", request("ExecuteWorkflow", MIB4))
        s.check("c4.size.execute_workflow.client_event_over_4MiB_resource_exhausted", request("ExecuteWorkflow", over))
        s.check("c4.size.execute_workflow.first_event_of_4MiB_passes", request("ExecuteWorkflow", MIB4, first=True))
        s.check("c4.size.execute_workflow.first_event_over_4MiB_resource_exhausted", request("ExecuteWorkflow", over, first=True))
        s.check("c4.size.validate_flow_config.request_of_4MiB_passes", request("ValidateFlowConfig", MIB4))
        s.check("c4.size.validate_flow_config.request_over_4MiB_resource_exhausted", request("ValidateFlowConfig", over))
        s.check("c4.size.generate_token.request_of_4MiB_passes", request("GenerateToken", MIB4))
        s.check("c4.size.generate_token.request_over_4MiB_resource_exhausted", request("GenerateToken", over))

    # ---- C4: no executor ------------------------------------------------------------------

    def unreachable(self):
        s = self.s
        p = self.w.configured

        def check(method):
            def body():
                md = self.w.md(self.w.ijwt(scopes=(AGENT,)))
                requests = None
                if method == "ExecuteWorkflow":
                    requests = [self.m.start_event(md_call_id(md))]
                elif method == "TrackSelfHostedExecuteWorkflow":
                    requests = [b for _, b in self.m.track_events()]
                outcome = self.call(p, method, md, requests)
                self.expect_status(outcome, UNAVAILABLE, EXECUTOR_UNAVAILABLE)
                self.expect(outcome.seconds < 3.0, f"took {outcome.seconds:.2f}s")

            return body

        for method in ("ExecuteWorkflow", "ListTools", "TrackSelfHostedExecuteWorkflow"):
            s.check(f"c4.unreachable_executor.{method}", check(method))
        s.check(
            "c4.unreachable_executor.refusals_still_first",
            lambda: self.expect_status(
                self.call(p, "ExecuteWorkflow", self.w.md(self.w.ijwt(scopes=(CHAT,))), [self.m.start_event("wf")]),
                PERMISSION_DENIED,
                "Unauthorized to execute software_development",
            ),
        )

    # ---- C3 -------------------------------------------------------------------------------

    def generate_token_claims(self):
        s = self.s
        h = self.h
        relay = self.w.relay

        def decode(token, process=relay):
            """Verified with PyJWT against the process's published JWKS, and with the key given to it."""
            url = f"http://127.0.0.1:{process.http_port}{h.OidcIssuer.JWKS}"
            client = jwt.PyJWKClient(url, timeout=h.RPC_TIMEOUT, cache_jwk_set=False)
            key = client.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=h.SERVICE_NAME, issuer=h.SERVICE_NAME, leeway=5)
            again = jwt.decode(
                token, self.w.authority.public, algorithms=["RS256"], audience=h.SERVICE_NAME, issuer=h.SERVICE_NAME, leeway=5
            )
            h.expect_equal("claims under the given key", again, claims)
            return claims

        def capabilities_learned():
            deadline = time.monotonic() + CAPABILITIES_TIMEOUT
            tries = 0
            while True:
                tries += 1
                outcome = self.generate(relay, self.w.ijwt(scopes=(AGENT,)))
                h.expect_ok(outcome)
                got = list(outcome.value.server_capabilities)
                if got or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            print(f"# server_capabilities learned after {tries} GenerateToken calls: {got}", flush=True)
            h.expect_equal("server_capabilities", got, EXECUTOR_CAPABILITIES)
            listed = self.call(relay, "ListCapabilities", self.w.md(self.w.ijwt(scopes=())), b"")
            h.expect_ok(listed)
            names = [c.name for c in h.pb.ListCapabilitiesResponse.FromString(listed.responses[0]).capabilities]
            h.expect_equal("the executor's ListCapabilities through the service", names, got)

        s.check("c3.server_capabilities.learned_from_executor", capabilities_learned)

        def capabilities_configured():
            outcome = self.generate(self.w.configured, self.w.ijwt(scopes=(AGENT,)))
            h.expect_ok(outcome)
            h.expect_equal("server_capabilities", list(outcome.value.server_capabilities), CONFIGURED_CAPABILITIES)

        s.check("c3.server_capabilities.configured", capabilities_configured)

        def scopes(caller, want, definition=None, process=relay):
            def check():
                outcome = self.generate(process, self.w.ijwt(scopes=caller), definition)
                h.expect_ok(outcome)
                claims = decode(outcome.value.token, process)
                got = claims.get("scopes")
                self.expect(isinstance(got, list) and len(got) == len(set(got)), f"scopes: {got!r}")
                h.expect_equal("scopes", sorted(got), sorted(want))

            return check

        s.check(
            "c3.scopes.all_delegable_of_many",
            scopes(ALL_SCOPES + ("duo_classic_chat", "ai_catalog_admin", "code_suggestions"), DELEGABLE),
        )
        s.check("c3.scopes.agent_platform_only", scopes((AGENT, "unknown_future_scope"), [AGENT]))
        s.check("c3.scopes.chat_and_file_context", scopes((CHAT, FILES, "complete_code"), [CHAT, FILES], "chat"))
        s.check("c3.scopes.execute_and_file_context", scopes((EXECUTE, FILES), [EXECUTE, FILES]))
        s.check(
            "c3.scopes.configured_delegable",
            scopes(ALL_SCOPES, CONFIGURED_DELEGABLE, process=self.w.configured),
        )

        copied = {
            "gitlab_instance_uid": "ins-7f1c2d3e-uid",
            "gitlab_root_namespace_id": 9970,
            "tool_access_policies": {
                "allow": ["read_file", "list_dir"],
                "deny": [{"tool": "run_command", "args": ["rm", "-rf"]}],
                "nested": {"a": [1, 2.5, None, True, "ü"], "b": {}},
            },
            "skip_usage_cutoff": True,
        }

        def claims_copied():
            token = self.w.ijwt(scopes=(AGENT, "not_delegable"), extra=copied, seat_count="17")
            outcome = self.generate(relay, token)
            h.expect_ok(outcome)
            claims = decode(outcome.value.token)
            for name, value in copied.items():
                h.expect_equal(name, claims.get(name, "<absent>"), value)
            h.expect_equal("duo_seat_count", str(claims.get("duo_seat_count")), "17")
            h.expect_equal("sub", claims.get("sub"), h.USER_ID)
            h.expect_equal("expiresAt", outcome.value.expiresAt, claims["exp"])
            self.expect(list(claims["scopes"]) == [AGENT], f"scopes {claims['scopes']}")

        s.check("c3.claims.copied_unchanged", claims_copied)

        def other_values():
            other = {"gitlab_instance_uid": "", "gitlab_root_namespace_id": "ns-as-string", "tool_access_policies": [], "skip_usage_cutoff": False}
            outcome = self.generate(relay, self.w.ijwt(scopes=(AGENT,), extra=other))
            h.expect_ok(outcome)
            claims = decode(outcome.value.token)
            for name, value in other.items():
                h.expect_equal(name, claims.get(name, "<absent>"), value)

        s.check("c3.claims.copied_unchanged.other_json_types", other_values)

        def none_copied():
            outcome = self.generate(relay, self.w.ijwt(scopes=(AGENT,)))
            h.expect_ok(outcome)
            claims = decode(outcome.value.token)
            present = [name for name in copied if name in claims]
            self.expect(not present, f"claims the caller did not have: {present}")

        s.check("c3.claims.absent_when_the_caller_has_none", none_copied)

        def user_token_runs_its_flow():
            token = self.user_token((CHAT,), "chat")
            claims = decode(token)
            h.expect_equal("scopes", claims.get("scopes"), [CHAT])

        s.check("c3.user_token.chat_only", user_token_runs_its_flow)

    # ---- refused calls, at the end --------------------------------------------------------

    def executor_record(self):
        def check():
            unknown = [r.method for r in self.x.records if r.method in (UNKNOWN_RPC, NOT_ALLOWED_METHOD, "GenerateToken")]
            self.expect(not unknown, f"methods the service must not relay reached the executor: {unknown}")

        self.s.check("c2.executor_never_saw_unrelayable_methods", check)

    def logs(self):
        h = self.h
        secret_lines = [line for line in self.w.authority.pem_pkcs1().splitlines() if not line.startswith("-----")]
        for p in self.w.processes:

            def check(p=p):
                text = p.log_text()
                self.expect(text != "", "the log is empty")
                for token in h.SEEN_TOKENS:
                    for needle in [n for n in [token] + token.split(".")[1:] if len(n) >= 16]:
                        self.expect(needle not in text, f"a token (or its payload/signature) is in the log: {needle[:24]}...")
                for line in secret_lines:
                    self.expect(line not in text, "private key material is in the log")

            self.s.check(f"logs.{p.name}.no_tokens_or_keys", check)

        def relay_lines_name_their_call():
            # The relay's bodies are polled in hyper's own tasks: what they log still carries the
            # call's request id (the 4 MiB answers above made them log).
            lines = [line for line in self.w.relay.log_text().splitlines() if "relay refuses" in line]
            self.expect(lines, "the relay logged no refused executor message")
            unnamed = [line for line in lines if "request_id" not in line]
            self.expect(not unnamed, f"relay lines without the call's request id: {unnamed[:1]}")

        self.s.check("logs.contract-relay.relay_lines_name_their_call", relay_lines_name_their_call)


def run(s, h, binary: str, log_dir) -> None:
    """These checks; `h` is the interop_test module (its helpers, stubs and constants)."""
    s.deadline = max(s.deadline, time.monotonic() + CONTRACT_BUDGET)
    started = time.monotonic()
    w = None
    checks = None
    try:
        w = ContractWorld(h, binary, log_dir)
        checks = Checks(s, h, w)
        if checks.setup():
            checks.generate_token_claims()  # first: capabilities are learned at start-up
            checks.generate_token_table()
            checks.execute_workflow_table()
            checks.track_and_listing_table()
            checks.open_and_other_methods()
            checks.reflection()
            checks.byte_exact()
            checks.metadata_and_status()
            checks.deadlines_and_cancellation()
            checks.sizes()
            checks.unreachable()
            checks.executor_record()
            for p in w.processes:
                s.check(f"final.{p.name}.process_alive", lambda p=p: h.expect(p.alive(), f"exited with {p.proc.returncode}"))
    except Exception as e:
        s.fail("contract.setup", f"{type(e).__name__}: {e}")
    finally:
        if w is not None:
            w.stop()
            if checks is not None:
                checks.logs()
            if s.failed:
                for p in w.processes:
                    for line in p.log_text().splitlines()[-8:]:
                        print(f"# {p.name} | {line}", flush=True)
    print(f"# 2026 contract checks: {time.monotonic() - started:.1f}s", flush=True)


def main(argv) -> int:
    """These checks alone (interop/run.sh runs them as part of the whole suite):
    `python interop/contract_test.py BINARY`."""
    import interop_test as h

    return h.run_alone(argv, run, "dws-contract-")


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
