"""Real OpenID providers in front of the service, for the interop suite (issue 16).

`interop_test.py` calls `run(suite, helpers, binary, log_dir)` after rotation_test.py; the checks land
in the same `N passed, N failed` line. `python interop/providers_test.py BINARY` runs them alone.

Four instances of panva's certified `oidc-provider` (npm, pinned by interop/oidc/package-lock.json,
installed here into .interop-cache/oidc/, never into the repository) issue client-credentials JWT
access tokens (RFC 9068) shaped like Keycloak's (`scope` string, `azp`, `aud` a client name, RS256),
Okta's (`scp` array, `cid`, PS256), Auth0's (issuer ending with `/`, `azp`, ES384) and Azure AD
v1's (issuer ending with `/`, `roles`, `appid`, keys published without `alg`). One binary trusts
all four through `type = "oidc"` key sources configured by TOML alone (audiences, algorithms,
`[key_sources.claims]`), and each provider's tokens get a user token from GenerateToken and run
ExecuteWorkflow; a wrong instance header is refused; `token explain` agrees; the providers serve
their JWKS without `Cache-Control`, so each source refreshes every `default_seconds`; Keycloak
rotates its key (a token of the new key passes at once, the old key's tokens stop passing within
seconds once it is retired) and Okta goes down and comes back (its last good keys serve meanwhile).
"""

import base64
import hashlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc

PROVIDERS_BUDGET = 90.0  # seconds granted to these checks on top of the suite's own budget
SOURCE = Path(__file__).resolve().parent / "oidc"
CACHE = Path(__file__).resolve().parent.parent / ".interop-cache" / "oidc"
DEFAULT_SECONDS = 2  # the sources' refresh.default_seconds: the providers send no Cache-Control
READY_TIMEOUT = 15.0
TOKEN_TIMEOUT = 5.0
# The claims of a Keycloak token, as the Rust tests and the README read them too.
KEYCLOAK_CLAIMS = (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "keycloak_claims.toml").read_text()

# Per provider: the TOML of its key source (beside name, type and issuer), the scope to ask for,
# what the instance header must carry, and the unit primitives its user token must hold.
SHAPES = {
    "keycloak": {
        "toml": 'algorithms = ["RS256"]\n' + KEYCLOAK_CLAIMS,
        "scope": "dws:run",
        "delegated": ["duo_agent_platform", "duo_workflow_execute_workflow"],
    },
    "okta": {
        "toml": """audiences = ["api://default"]
algorithms = ["PS256"]
[key_sources.claims]
scopes = ["scp"]
instance_id = "cid"
""",
        "scope": "duo_agent_platform duo_chat",
        "delegated": ["duo_agent_platform", "duo_chat"],
    },
    "auth0": {
        "toml": """audiences = ["https://dws.example.com"]
algorithms = ["ES384"]
[key_sources.claims]
scopes = ["scope", "permissions"]
instance_id = "azp"
""",
        "scope": "duo_agent_platform duo_chat",
        "delegated": ["duo_agent_platform", "duo_chat"],
    },
    "azure": {
        "toml": """audiences = ["api://dws"]
[key_sources.claims]
scopes = ["roles", "scp"]
instance_id = "appid"
[key_sources.claims.scope_map]
"DWS.Run" = ["duo_agent_platform"]
""",
        "scope": None,
        "delegated": ["duo_agent_platform"],
    },
}


def install(h) -> Path:
    """oidc-provider as the lock file pins it, in the cache folder (`npm ci` only when the lock
    changed); the provider script beside it, so that Node finds the package."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp = CACHE / ".lock.sha256"
    want = hashlib.sha256((SOURCE / "package-lock.json").read_bytes()).hexdigest()
    if not (CACHE / "node_modules" / "oidc-provider").is_dir() or not stamp.exists() or stamp.read_text() != want:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(SOURCE / name, CACHE / name)
        npm = shutil.which("npm")
        h.expect(npm is not None, "npm is not on the PATH (Node 20 or later is needed)")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CACHE,
                              capture_output=True, text=True, timeout=300)
        h.expect(done.returncode == 0, f"npm ci failed: {done.stderr.strip()[-400:]}")
        stamp.write_text(want)
    shutil.copy(SOURCE / "provider.mjs", CACHE / "provider.mjs")
    return CACHE


class Providers:
    """The Node process running the four providers, and its command channel."""

    def __init__(self, h, directory: Path, log_dir: Path):
        self.h = h
        node = shutil.which("node")
        h.expect(node is not None, "node is not on the PATH")
        self.log_path = log_dir / "oidc-providers.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([node, "provider.mjs"], cwd=directory, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        line = self.proc.stdout.readline()
        h.expect(line.startswith("{"), f"the providers did not start: {line!r} {self.log_tail()}")
        self.described = json.loads(line)

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-4:])
        except OSError:
            return ""

    def command(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        self.h.expect(answer.startswith("ok"), f"{line}: {answer!r}")
        return answer

    def token(self, name: str, scope=None) -> str:
        """A client-credentials access token of provider `name`."""
        p = self.described[name]
        body = {"grant_type": "client_credentials", "resource": p["resource"]}
        if scope:
            body["scope"] = scope
        basic = base64.b64encode(f"{p['client_id']}:{p['client_secret']}".encode()).decode()
        request = urllib.request.Request(p["token_endpoint"], data=urllib.parse.urlencode(body).encode(),
                                         headers={"authorization": f"Basic {basic}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=TOKEN_TIMEOUT) as response:
                token = json.load(response)["access_token"]
        except urllib.error.HTTPError as e:
            raise self.h.Failure(f"{name} refused a token: {e.code} {e.read()[:200]!r}")
        TOKENS.append(token)
        return token

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the script exits when its input ends
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


TOKENS = []  # every provider token used: none may appear in the service's log


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict:
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))


def config(providers: Providers) -> str:
    """Four `oidc` key sources, issuers exactly as the providers state them."""
    parts = []
    for name, shape in SHAPES.items():
        issuer = providers.described[name]["issuer"]
        parts.append(f"""[[key_sources]]
type = "oidc"
name = "{name}"
issuer = "{issuer}"
refresh = {{ min_seconds = 1, default_seconds = {DEFAULT_SECONDS}, miss_refetch_interval_seconds = 1, timeout_ms = 2000 }}
{shape["toml"]}""")
    return "\n".join(parts)


def key_sources(h, process) -> dict:
    _, _, body = h.http_get(f"http://127.0.0.1:{process.metrics_port}/key-sources")
    return {s["name"]: s for s in json.loads(body)["sources"]}


def until(h, what: str, condition, timeout: float):
    """Polls `condition` until it returns a true value; that value, or a Failure naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise h.Failure(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)


def md(h, token: str, instance: str):
    """The metadata of a call with a provider's token: no realm (its tokens carry none)."""
    return h.metadata(token, instance_id=instance, realm=None, seat_count=None)


def scenarios(s, h, binary: str, providers: Providers, process, work: Path) -> None:
    P = providers.described

    def sources_ready():
        states = {n: src.get("state") for n, src in key_sources(h, process).items() if n in SHAPES}
        return all(state == "ready" for state in states.values()) and len(states) == len(SHAPES)

    s.check("providers.sources_ready", lambda: until(h, "every provider's source ready", sources_ready, READY_TIMEOUT))

    for name, shape in SHAPES.items():
        instance = P[name]["client_id"]

        def shaped(name=name, shape=shape, instance=instance):
            token = providers.token(name, shape["scope"])
            claims, header = claims_of(token), header_of(token)
            h.expect_equal(f"{name} iss", claims["iss"], P[name]["issuer"])
            h.expect_equal(f"{name} alg", header["alg"], P[name]["alg"])
            minted = h.generate_token(process.stub, md(h, token, instance))
            h.expect_ok(minted)
            user = claims_of(minted.value.token)
            h.expect_equal("user token iss", user["iss"], h.SERVICE_NAME)
            h.expect_equal("user token aud", user["aud"], h.SERVICE_NAME)
            h.expect_equal("user token scopes", sorted(user["scopes"]), sorted(shape["delegated"]))
            h.expect_equal("user token instance", user["gitlab_instance_id"], instance)
            # The provider's token and the user token both run a workflow (no executor here).
            for t, who in ((token, instance), (minted.value.token, instance)):
                h.expect_status(h.execute_workflow(process.stub, h.metadata(t, instance_id=who, realm=None)),
                                grpc.StatusCode.UNIMPLEMENTED, "No workflow executor configured")

        s.check(f"providers.{name}.token_to_user_token_to_workflow", shaped)

    def wrong_instance():
        token = providers.token("keycloak", "dws:run")
        h.expect_status(h.generate_token(process.stub, md(h, token, "someone-else")),
                        h.UNAUTHENTICATED, "Header mismatch 'X-Gitlab-Instance-Id'")

    s.check("providers.keycloak.instance_bound_from_azp", wrong_instance)

    def chat_only():
        token = providers.token("keycloak", "dws:chat")
        instance = P["keycloak"]["client_id"]
        h.expect_status(h.generate_token(process.stub, md(h, token, instance)), h.PERMISSION_DENIED,
                        "Unauthorized to generate token")
        h.expect_ok(h.generate_token(process.stub, md(h, token, instance),
                                     request=h.pb.GenerateTokenRequest(workflowDefinition="chat")))

    s.check("providers.keycloak.scope_map_grants_only_what_it_maps", chat_only)

    def slash_is_part_of_the_issuer():
        for name in ("auth0", "azure"):
            h.expect(P[name]["issuer"].endswith("/"), f"{name}'s issuer has no trailing slash")
            h.expect_equal(f"{name} source issuer", key_sources(h, process)[name]["issuer"], P[name]["issuer"])

    s.check("providers.issuers_with_a_trailing_slash_as_written", slash_is_part_of_the_issuer)

    def refreshed_by_default():
        for name in SHAPES:
            src = key_sources(h, process)[name]
            h.expect_equal(f"{name} refresh_from", src.get("refresh_from"), "default")
            h.expect_equal(f"{name} refresh_seconds", src.get("refresh_seconds"), DEFAULT_SECONDS)

    s.check("providers.jwks_without_cache_control_refresh_every_default_seconds", refreshed_by_default)

    def explained():
        token = providers.token("keycloak", "dws:run")
        env = h.clean_environment()
        env.update({"DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": "", "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": ""})
        done = subprocess.run([binary, "token", "explain", "--config", str(work / "providers.toml")], input=token,
                              capture_output=True, text=True, env=env, timeout=30)
        h.expect(done.returncode == 0, f"token explain failed: {done.stderr[-300:]}")
        out = done.stdout
        for want in ("verdict: authenticated by key source keycloak",
                     f'x-gitlab-instance-id: "{P["keycloak"]["client_id"]}" (from claim azp)',
                     "GenerateToken: OK"):
            h.expect(want in out, f"token explain does not say {want!r}: {out[-600:]}")
        h.expect(all(seg not in out + done.stderr for seg in token.split(".")), "token explain printed the token")

    s.check("providers.token_explain_agrees", explained)

    # Keycloak rotates: a new key first in its JWKS, then the old one retired.
    instance = P["keycloak"]["client_id"]
    state = {}

    def rotation_new_key_at_once():
        state["old_token"] = providers.token("keycloak", "dws:run")
        providers.command("rotate keycloak")
        new = providers.token("keycloak", "dws:run")
        h.expect(header_of(new)["kid"] != header_of(state["old_token"])["kid"], "the rotation did not change the kid")
        t0 = time.monotonic()
        h.expect_ok(h.generate_token(process.stub, md(h, new, instance)))  # an unknown kid: one refetch
        print(f"# providers: a token of Keycloak's new key accepted {1000 * (time.monotonic() - t0):.0f} ms "
              f"after the rotation, on its first call", flush=True)
        h.expect_ok(h.generate_token(process.stub, md(h, state["old_token"], instance)))

    s.check("providers.keycloak.rotation_new_key_accepted_at_once", rotation_new_key_at_once)

    def rotation_old_key_retired():
        h.expect(state.get("old_token"), "no token of the old key: the rotation's first check failed")
        providers.command("retire keycloak")
        t0 = time.monotonic()
        until(h, "the retired key's token refused",
              lambda: h.generate_token(process.stub, md(h, state["old_token"], instance)).code == h.UNAUTHENTICATED,
              DEFAULT_SECONDS + 8)
        print(f"# providers: Keycloak's retired key refused {time.monotonic() - t0:.1f} s after it left the JWKS "
              f"(refresh.default_seconds = {DEFAULT_SECONDS})", flush=True)
        h.expect_ok(h.generate_token(process.stub, md(h, providers.token("keycloak", "dws:run"), instance)))

    s.check("providers.keycloak.rotation_old_key_refused_within_default_seconds", rotation_old_key_retired)

    # Okta goes down: its last good keys keep serving, the source says stale, then recovers.
    def outage():
        token = providers.token("okta", "duo_agent_platform")
        okta = P["okta"]["client_id"]
        providers.command("down okta")
        try:
            stale = until(h, "okta's source stale", lambda: key_sources(h, process)["okta"].get("state") == "stale" and
                          key_sources(h, process)["okta"], DEFAULT_SECONDS + 8)
            h.expect("503" in (stale.get("reason") or ""), f"the reason does not name the outage: {stale}")
            h.expect_ok(h.generate_token(process.stub, md(h, token, okta)))
        finally:
            providers.command("up okta")
        until(h, "okta's source ready again", lambda: key_sources(h, process)["okta"].get("state") == "ready",
              DEFAULT_SECONDS + 8)
        h.expect_ok(h.generate_token(process.stub, md(h, token, okta)))

    s.check("providers.okta.outage_keeps_the_last_good_keys", outage)


def run(s, h, binary: str, log_dir) -> None:
    """The scenarios; `h` is the interop_test module (its Suite, helpers and ServiceProcess)."""
    s.deadline = max(s.deadline, time.monotonic() + PROVIDERS_BUDGET)
    started = time.monotonic()
    work = Path(log_dir) / "providers"
    work.mkdir(parents=True, exist_ok=True)
    providers = process = None
    try:
        directory = None

        def installed():
            nonlocal directory
            t0 = time.monotonic()
            directory = install(h)
            print(f"# providers: oidc-provider installed in {time.monotonic() - t0:.1f}s", flush=True)

        if not s.check("providers.install_oidc_provider", installed):
            return
        providers = Providers(h, directory, work)
        (work / "providers.toml").write_text(config(providers))
        process = h.ServiceProcess("providers", binary, {
            "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": "",
            "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": "",
        }, work, config=work / "providers.toml")
        process.wait_ready()
        scenarios(s, h, binary, providers, process, work)
    except Exception as e:
        s.fail("providers.setup", f"{type(e).__name__}: {e}")
    finally:
        if process is not None:
            process.stop()

            def clean():
                text = process.log_text()
                for token in TOKENS:
                    for needle in [token] + token.split(".")[1:]:
                        h.expect(needle not in text, "a provider's token is in the service's log")

            s.check("providers.logs.no_tokens", clean)
            if s.failed:
                for line in process.log_text().splitlines()[-6:]:
                    print(f"# providers | {line}", flush=True)
        if providers is not None:
            providers.stop()
    print(f"# providers scenarios: {time.monotonic() - started:.1f}s", flush=True)


def main(argv) -> int:
    """The scenarios alone (interop/run.sh runs them as part of the whole suite):
    `python interop/providers_test.py BINARY`."""
    import interop_test as h

    return h.run_alone(argv, run, "dws-providers-")


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
