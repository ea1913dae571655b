"""A rolling rotation of the local authority's key across three replicas, for the interop suite.

`interop_test.py` calls `run(suite, helpers, binary, log_dir)` after deploy_test.py; the checks land
in the same `N passed, N failed` line. `python interop/rotation_test.py BINARY` runs them alone.

GitLab rotates the key that signs user tokens in three steps (the new key validates; the new key
signs and the old one validates; the old one goes), and a Kubernetes Secret reaches the pods one at
a time. Here three replicas of the binary run on loopback, each with its own copy of the two key
files, the same service name and the same static key source standing for a GitLab instance, and
one Python executor behind them all. Replicas 0 and 1 read their files again on SIGHUP only; the
last one is never signalled and reads them on its 1 s poll. The old key is RSA (RS256), the new one
Ed25519 (EdDSA): the algorithm changes on the way too.

While the files of one replica after the other are replaced, client threads keep minting user
tokens with GenerateToken on one replica and using them with ExecuteWorkflow on another, and keep
using recent tokens of every kid on every replica. Every call is judged against what the target
replica is configured with while the call runs (see `Ledger`): a call is good when the token's kid
is in the replica's key set for the whole call, counting a replica whose files were changed and
whose change is not visible yet as holding only the keys of both sets. No good call may be refused
(the main check). Each replica's change must show in its published JWKS (and, when it signs with a
new key, in the next token it mints) within a few seconds; after each step the three JWKS are the
same. After the last step reaches a replica, a token of the old key that it accepted just before is
refused there. On the way, a garbage signing key file on one replica changes nothing but its
`reload` health entry and `duo_workflow_auth_reload_failing` metric, until the right file is back.

Figures (lines starting with `# `): calls made, good, good refused, per-step reload-to-effect times
(from the file write, for the signalled replicas and the polling one apart) and the duration.
"""

import json
import os
import random
import signal
import statistics
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import grpc
import jwt

ROTATION_BUDGET = 60.0  # seconds granted to the scenario on top of the suite's own budget
REPLICAS = 3
POLLING = REPLICAS - 1  # the replica reloaded by its poll, never signalled
POLL_SECONDS = 1
CLIENT_THREADS = 3
POOL = 16  # recent user tokens kept per kid, used again on every replica
SIGNAL_EFFECT_TIMEOUT = 5.0  # seconds from the file write (and SIGHUP) to the change in the JWKS
POLL_EFFECT_TIMEOUT = POLL_SECONDS + 7.0  # the same, for the polling replica
WARMUP_CALLS = 30  # good calls made before the first file changes
CROSS_CALLS = 5  # accepted calls each way across switched and unswitched replicas, between switches
CLIENT_WAIT = 8.0  # seconds the scenario waits for the client to make the calls it needs
DWELL = 0.5  # seconds at least between two replicas' changes: the client goes on meanwhile
INSTANCE_ISSUER = "http://gitlab.local"
INSTANCE_SOURCE = "gitlab-local"
GARBAGE = b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
ROUTINE_LOG_LINES = ("call finished", "user token minted")
RELOAD_FAILING = 'duo_workflow_auth_reload_failing{files="local-authority"}'


class Ledger:
    """What one replica is configured with, as a history of generations, each (sure, maybe,
    signing): the kids valid for the whole generation, the kids that may be valid during it,
    the kids it may sign with. `begin` opens a transition (the files are about to change: only
    the kids of both sets are sure, either set's may be), `settle` closes it once the change is
    visible. A call reads the generation before and after itself and is judged on every
    generation in between."""

    def __init__(self, kids, signing):
        self.lock = threading.Lock()
        self.history = [(frozenset(kids), frozenset(kids), frozenset(signing))]
        self.target = None

    def gen(self) -> int:
        with self.lock:
            return len(self.history) - 1

    def current(self):
        with self.lock:
            return self.history[-1]

    def begin(self, kids, signing) -> None:
        with self.lock:
            sure, maybe, signs = self.history[-1]
            self.target = (frozenset(kids), frozenset(signing))
            self.history.append((sure & self.target[0], maybe | self.target[0], signs | self.target[1]))

    def settle(self) -> None:
        with self.lock:
            kids, signing = self.target
            self.history.append((kids, kids, signing))

    def judge(self, kid, g0: int, g1: int):
        """(good: the kid valid throughout, surely bad: valid at no moment, the signing kid when
        the replica's keys were one settled pair throughout, else None)."""
        with self.lock:
            span = self.history[g0:g1 + 1]
        good = all(kid in sure for sure, _, _ in span)
        bad = all(kid not in maybe for _, maybe, _ in span)
        signing = None
        if len(span) == 1 and span[0][0] == span[0][1] and len(span[0][2]) == 1:
            signing = next(iter(span[0][2]))
        return good, bad, signing

    def may_sign(self, kid, g0: int, g1: int) -> bool:
        with self.lock:
            return any(kid in signs for _, _, signs in self.history[g0:g1 + 1])


class Trouble:
    """How many calls went some wrong way, and the first few of them."""

    SAMPLES = 5

    def __init__(self):
        self.count = 0
        self.samples = []

    def add(self, what) -> None:
        self.count += 1
        if len(self.samples) < self.SAMPLES:
            self.samples.append(what)

    def __bool__(self):
        return self.count > 0

    def __repr__(self):
        return f"{self.count}, e.g. {self.samples}"


class Stats:
    """What the client did and saw; every counter under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.made = 0  # ExecuteWorkflow calls
        self.good = 0
        self.uncertain = 0  # not counted either way: the target's keys were changing
        self.good_refused = Trouble()  # (replica, kid, outcome)
        self.good_failed = Trouble()  # a good call that ended otherwise than OK with the executor's actions
        self.bad_accepted = Trouble()  # a kid valid at no moment of the call, accepted
        self.bad = 0
        self.minted = 0
        self.mint_failed = Trouble()
        self.mint_wrong_kid = Trouble()
        self.per_replica = [0] * REPLICAS  # calls made on each
        self.crossed = {}  # (token kid, target's signing kid) -> good calls accepted



class Replica:
    """One service process with its own key files and configuration."""

    def __init__(self, h, index: int, binary: str, work: Path, instance_jwks: Path, old_pem: bytes, old_kid: str):
        self.h = h
        self.index = index
        self.name = f"rotation-{index}"
        self.polling = index == POLLING
        self.dir = work / self.name
        self.dir.mkdir()
        self.signing = self.dir / "signing.pem"
        self.validation = self.dir / "validation.pem"  # absent: no validation key
        write_atomic(self.signing, old_pem)
        config = self.dir / "config.toml"
        config.write_text(
            "[self_signed_jwt]\n"
            f"signing_key_file = {json.dumps(str(self.signing))}\n"
            f"validation_key_file = {json.dumps(str(self.validation))}\n\n"
            "[reload]\n"
            f"poll_seconds = {POLL_SECONDS if self.polling else 0}\n\n"
            "[[key_sources]]\n"
            'type = "static"\n'
            f'name = "{INSTANCE_SOURCE}"\n'
            f'issuer = "{INSTANCE_ISSUER}"\n'
            f"jwks_file = {json.dumps(str(instance_jwks))}\n"
        )
        self.ledger = Ledger({old_kid}, {old_kid})
        self.process = None
        self.operator = None
        self.http = None
        self.config = config
        self.binary = binary
        self.work = work

    def spawn(self, upstream: str) -> None:
        settings = {
            "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL": "",
            "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL": "",
            "DUO_WORKFLOW_CLOUD_CONNECTOR_SERVICE_NAME": self.h.SERVICE_NAME,
            "DUO_WORKFLOW_UPSTREAM__URL": upstream,
        }
        self.process = self.h.ServiceProcess(self.name, self.binary, settings, self.work, config=self.config)

    def wait_ready(self) -> None:
        p = self.process
        p.wait_ready()  # every listener on port 0: the addresses are read from the start-up line
        self.http = f"127.0.0.1:{p.http_port}"
        self.operator = f"127.0.0.1:{p.metrics_port}"

    @property
    def stub(self):
        return self.process.stub

    def jwks(self) -> dict:
        status, _, body = self.h.http_get(f"http://{self.http}/oauth/discovery/keys")
        self.h.expect(status == 200, f"{self.name}: JWKS status {status}")
        return json.loads(body)

    def jwks_kids(self) -> list:
        return [k.get("kid") for k in self.jwks()["keys"]]

    def metric(self, name: str):
        _, _, body = self.h.http_get(f"http://{self.operator}/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def reload(self) -> None:
        """SIGHUP, unless this replica is the one left to its poll."""
        if not self.polling:
            self.process.proc.send_signal(signal.SIGHUP)

    def reloads_logged(self) -> int:
        return sum(1 for line in self.process.log_text().splitlines()
                   if "reloaded:" in line and "local-authority" in line)


def write_atomic(path: Path, content: bytes) -> None:
    replace_files({path: content})


def replace_files(files: dict) -> None:
    """Each file's new contents appear at once, as a Secret update does: written beside, then
    renamed over it (`None`: the file is removed). All are written first, then renamed one
    right after the other, so that a poll finds at most a few microseconds between two of them
    (and the service's 200 ms settle time covers that)."""
    staged = []
    for path, content in files.items():
        tmp = None
        if content is not None:
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        staged.append((path, tmp))
    for path, tmp in staged:
        if tmp is None:
            path.unlink(missing_ok=True)
        else:
            os.rename(tmp, path)


def kid_of(token: str):
    return jwt.get_unverified_header(token).get("kid")


def ms_figures(values: list) -> str:
    if not values:
        return "none"
    return f"max {max(values):.0f} ms, median {statistics.median(values):.0f} ms ({len(values)})"


class Rotation:
    """The keys, the executor, the replicas, the client and the steps of the scenario."""

    def __init__(self, s, h, binary: str, work: Path):
        self.s = s
        self.h = h
        self.binary = binary
        self.work = work
        work.mkdir(exist_ok=True)
        self.stats = Stats()
        self.stop_client = threading.Event()
        self.threads = []
        self.pools = {}  # kid -> deque of recent user tokens
        self.pools_lock = threading.Lock()
        self.tokens = []  # every user token minted, for the log check
        self.effect = {}  # step -> {"signal": [ms], "poll": [ms]}
        self.broken = None  # the first step that failed: the later ones are not run
        self.replicas = []
        self.executor = None
        self.crossed_figures = {}
        self.changed = 0.0  # when the last change of a replica's files became visible

    def setup(self) -> None:
        """Keys, the instance, the executor and the replicas' processes (stopped by `stop`)."""
        h, work = self.h, self.work
        # The instance standing for GitLab: a static key source on every replica.
        self.instance = h.Key("gitlab-local-1")
        jwks = work / "instance.jwks"
        jwks.write_text(json.dumps({"keys": [self.instance.jwk()]}))
        instance_token = h.mint(self.instance, iss=INSTANCE_ISSUER, scopes=(h.EXECUTE, h.GENERATE))
        self.instance_md = h.metadata(instance_token)

        # OLD: RSA (RS256, the default); NEW: Ed25519 (EdDSA).
        self.old_pem, self.old_kid = self.generate("old.pem", None)
        self.new_pem, self.new_kid = self.generate("new.pem", "eddsa")
        self.names = {self.old_kid: "OLD", self.new_kid: "NEW"}
        self.secret_lines = [line for pem in (self.old_pem, self.new_pem) for line in pem.decode().splitlines()
                             if line and not line.startswith("-----")]

        self.executor = h.Executor()
        for i in range(REPLICAS):
            self.replicas.append(Replica(h, i, self.binary, work, jwks, self.old_pem, self.old_kid))
        for r in self.replicas:
            r.spawn(self.executor.url)

    def generate(self, name: str, alg):
        path = self.work / name
        made = subprocess.run([self.binary, "keys", "generate", "--out", str(path)] + (["--alg", alg] if alg else []),
                              capture_output=True, text=True, timeout=60)
        self.h.expect(made.returncode == 0, f"keys generate: {made.stderr.strip()}")
        public = subprocess.run([self.binary, "keys", "public", "--key", str(path), "--jwks"],
                                capture_output=True, text=True, timeout=60)
        self.h.expect(public.returncode == 0, f"keys public: {public.stderr.strip()}")
        kid = json.loads(public.stdout)["keys"][0]["kid"]
        return path.read_bytes(), kid

    def named(self, kids) -> str:
        return "[" + ", ".join(self.names.get(k, str(k)) for k in kids) + "]"

    # ---- the client ---------------------------------------------------------------------------

    def mint(self, i: int):
        r = self.replicas[i]
        g0 = r.ledger.gen()
        outcome = self.h.generate_token(r.stub, self.instance_md)
        g1 = r.ledger.gen()
        st = self.stats
        if not outcome.ok:
            with st.lock:
                st.mint_failed.add((r.name, repr(outcome)))
            return None
        token = outcome.value.token
        kid = kid_of(token)
        with st.lock:
            st.minted += 1
            self.tokens.append(token)
            if not r.ledger.may_sign(kid, g0, g1):
                st.mint_wrong_kid.add((r.name, self.names.get(kid, kid)))
        with self.pools_lock:
            self.pools.setdefault(kid, deque(maxlen=POOL)).append(token)
        return token, kid

    def call(self, j: int, token: str, kid) -> None:
        r = self.replicas[j]
        g0 = r.ledger.gen()
        outcome = self.h.execute_workflow(r.stub, self.h.metadata(token))
        g1 = r.ledger.gen()
        good, bad, signing = r.ledger.judge(kid, g0, g1)
        completed = outcome.ok and len(outcome.value) == 2
        st = self.stats
        with st.lock:
            st.made += 1
            st.per_replica[j] += 1
            what = (r.name, self.names.get(kid, kid), repr(outcome))
            if good:
                st.good += 1
                if outcome.code == grpc.StatusCode.UNAUTHENTICATED:
                    st.good_refused.add(what)
                elif not completed:
                    st.good_failed.add(what)
                elif signing is not None:
                    st.crossed[(kid, signing)] = st.crossed.get((kid, signing), 0) + 1
            elif bad:
                st.bad += 1
                if outcome.ok:
                    st.bad_accepted.add(what)
            else:
                st.uncertain += 1

    def client(self, seed: int) -> None:
        rnd = random.Random(seed)
        others = {i: [j for j in range(REPLICAS) if j != i] for i in range(REPLICAS)}
        while not self.stop_client.is_set():
            i = rnd.randrange(REPLICAS)
            minted = self.mint(i)
            if minted is not None:
                self.call(rnd.choice(others[i]), *minted)
            # A recent token of a kid drawn at random, on a replica drawn at random: tokens live an
            # hour, and GitLab's clients use them on whichever replica the load balancer picks.
            with self.pools_lock:
                kid = rnd.choice(sorted(self.pools)) if self.pools else None
                token = rnd.choice(self.pools[kid]) if kid is not None else None
            if token is not None:
                k = rnd.randrange(REPLICAS)
                # Tokens of a key removed everywhere it could be would have expired (GitLab waits
                # their lifetime before the last step): not sent where they surely are not valid.
                if kid in self.replicas[k].ledger.current()[1]:
                    self.call(k, token, kid)

    def start_client(self) -> None:
        for n in range(CLIENT_THREADS):
            t = threading.Thread(target=self.client, args=(n,), name=f"rotation-client-{n}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop_clients(self) -> None:
        self.stop_client.set()
        for t in self.threads:
            t.join(timeout=self.h.STREAM_TIMEOUT + 5)
        self.threads = [t for t in self.threads if t.is_alive()]

    def wait_client(self, what: str, done) -> None:
        """Until `done(stats)` holds (read under the stats' lock), or fails the check."""
        deadline = time.monotonic() + CLIENT_WAIT
        while True:
            with self.stats.lock:
                if done(self.stats):
                    return
            if time.monotonic() > deadline:
                raise self.h.Failure(f"the client did not {what} within {CLIENT_WAIT:.0f}s")
            time.sleep(0.02)

    # ---- the replicas' files --------------------------------------------------------------------

    def switch(self, r: Replica, step: str, signing_pem: bytes, validation_pem, kids: list) -> None:
        """Writes the replica's files, reloads it and waits until its JWKS lists `kids` (the
        signing key's first); records the time from the write."""
        h = self.h
        self.dwell()
        r.ledger.begin(set(kids), {kids[0]})
        started = time.monotonic()
        replace_files({r.signing: signing_pem, r.validation: validation_pem})
        r.reload()
        deadline = started + (POLL_EFFECT_TIMEOUT if r.polling else SIGNAL_EFFECT_TIMEOUT)
        while True:
            got = r.jwks_kids()
            if got == kids:
                break
            if time.monotonic() > deadline:
                raise h.Failure(f"{r.name}: the JWKS is {self.named(got)}, not {self.named(kids)}, "
                                f"{deadline - started:.0f}s after its files changed ({step})")
            time.sleep(0.02)
        elapsed = (time.monotonic() - started) * 1000
        # The pair is swapped at once: the next token minted there is signed by the new signing key.
        minted = h.generate_token(r.stub, self.instance_md)
        h.expect_ok(minted)
        h.expect(kid_of(minted.value.token) == kids[0],
                 f"{r.name} publishes {self.named(kids)} but signed a token with "
                 f"{self.named([kid_of(minted.value.token)])} ({step})")
        r.ledger.settle()
        self.changed = time.monotonic()
        self.effect.setdefault(step, {"signal": [], "poll": []})["poll" if r.polling else "signal"].append(elapsed)

    def dwell(self) -> None:
        """Kubernetes updates the pods' files at different moments: the client uses the replicas
        in their mixed state for a while before the next one changes."""
        time.sleep(max(0.0, self.changed + DWELL - time.monotonic()))

    def converged(self, kids: list) -> None:
        documents = [r.jwks() for r in self.replicas]
        for r, doc in zip(self.replicas, documents):
            got = [k.get("kid") for k in doc["keys"]]
            self.h.expect(got == kids, f"{r.name} publishes {self.named(got)}, not {self.named(kids)}")
        self.h.expect(all(doc == documents[0] for doc in documents),
                      "the replicas publish the same kids but not the same JWKS documents")

    # ---- the scenario ---------------------------------------------------------------------------

    def step(self, name: str, fn) -> None:
        if self.broken is not None:
            self.s.fail(name, f"not run: {self.broken} failed")
            return
        if not self.s.check(name, fn):
            self.broken = name

    def scenario(self) -> None:
        h = self.h
        old, new = self.old_kid, self.new_kid

        def start():
            for r in self.replicas:
                r.wait_ready()
            for r in self.replicas:
                h.expect_equal(f"{r.name} JWKS", self.named(r.jwks_kids()), self.named([old]))
                h.expect_health(r.process, "reload", "SERVING", timeout=5.0)
                minted = h.generate_token(r.stub, self.instance_md)
                h.expect_ok(minted)
                h.expect_equal(f"{r.name} signing kid", self.named([kid_of(minted.value.token)]), self.named([old]))
                h.expect_equal("alg of the old key's tokens", jwt.get_unverified_header(minted.value.token)["alg"], "RS256")
            self.converged([old])
            self.start_client()
            self.wait_client(f"make {WARMUP_CALLS} good calls", lambda st: st.good >= WARMUP_CALLS)

        self.step("rotation.start.three_replicas_sign_with_the_old_key", start)

        def step1():
            for r in self.replicas:
                self.switch(r, "step 1", self.old_pem, self.new_pem, [old, new])
            self.converged([old, new])

        self.step("rotation.step1.new_key_validates_on_every_replica", step1)

        def garbage():
            r = self.replicas[0]
            write_atomic(r.signing, GARBAGE)
            r.reload()
            h.expect_health(r.process, "reload", "NOT_SERVING", timeout=5.0)
            h.expect_equal(f"{r.name} {RELOAD_FAILING}", r.metric(RELOAD_FAILING), 1.0)
            h.expect_health(r.process, "", "SERVING")
            h.expect_equal(f"{r.name} JWKS", self.named(r.jwks_kids()), self.named([old, new]))
            for _ in range(3):
                minted = h.generate_token(r.stub, self.instance_md)
                h.expect_ok(minted)
                h.expect_equal("kid minted with a garbage signing file", self.named([kid_of(minted.value.token)]),
                               self.named([old]))
            before = self.stats.per_replica[0]
            self.wait_client(f"use {r.name} 20 times", lambda st: st.per_replica[0] >= before + 20)

        self.step("rotation.garbage_signing_file.keeps_the_previous_keys", garbage)

        def restored():
            r = self.replicas[0]
            write_atomic(r.signing, self.old_pem)
            r.reload()
            h.expect_health(r.process, "reload", "SERVING", timeout=5.0)
            h.expect_equal(f"{r.name} {RELOAD_FAILING}", r.metric(RELOAD_FAILING), 0.0)

        self.step("rotation.garbage_signing_file.restored_reload_serving", restored)

        crossed = {}

        def step2():
            pairs = ((new, old), (old, new))  # (the token's kid, the signing kid of the replica using it)
            last = len(self.replicas) - 1
            first = {}  # the crossings counted once the first replica switched
            for n, r in enumerate(self.replicas):
                if n == last:
                    self.dwell()
                    with self.stats.lock:
                        crossed.update({p: self.stats.crossed.get(p, 0) - first.get(p, 0) for p in pairs})
                self.switch(r, "step 2", self.new_pem, self.old_pem, [new, old])
                if n == last:
                    break
                # Switched and unswitched replicas side by side: tokens of each are used on the
                # other, the window where a broken rotation refuses good calls.
                with self.stats.lock:
                    base = dict(self.stats.crossed)
                if n == 0:
                    first = base
                self.wait_client(f"use {CROSS_CALLS} NEW tokens on unswitched replicas and {CROSS_CALLS} OLD tokens "
                                 f"on switched ones after {r.name} switched",
                                 lambda st: all(st.crossed.get(p, 0) - base.get(p, 0) >= CROSS_CALLS for p in pairs))
            self.converged([new, old])

        self.step("rotation.step2.new_key_signs_on_every_replica", step2)

        def step3():
            with self.pools_lock:
                olds = list(self.pools.get(old, []))
            h.expect(olds, "the client holds no token of the old key")
            token = olds[-1]
            for r in self.replicas:
                h.expect_ok(h.execute_workflow(r.stub, h.metadata(token)))
                self.switch(r, "step 3", self.new_pem, None, [new])
                outcome = h.execute_workflow(r.stub, h.metadata(token))
                h.expect(outcome.code == grpc.StatusCode.UNAUTHENTICATED,
                         f"{r.name} still accepts a token of the removed key: {outcome!r}")
            self.converged([new])
            minted = h.generate_token(self.replicas[0].stub, self.instance_md)
            h.expect_ok(minted)
            h.expect_equal("alg of the new key's tokens", jwt.get_unverified_header(minted.value.token)["alg"], "EdDSA")

        self.step("rotation.step3.old_key_removed_and_refused_on_every_replica", step3)
        # Some more calls with the rotation over.
        if self.broken is None:
            self.s.check("rotation.client.calls_after_the_rotation",
                         lambda: self.wait_client("make 20 calls after the rotation",
                                                  lambda st, made=self.stats.made: st.made >= made + 20))
        self.crossed_figures = crossed

    def client_checks(self) -> None:
        h, st = self.h, self.stats
        s = self.s
        s.check("rotation.client.made_calls_on_every_replica",
                lambda: h.expect(min(st.per_replica) >= 20 and st.good >= 100,
                                 f"calls per replica {st.per_replica}, {st.good} good"))
        s.check("rotation.client.no_good_call_refused",
                lambda: h.expect(not st.good_refused, f"good calls refused: {st.good_refused!r}"))
        s.check("rotation.client.every_good_call_completed",
                lambda: h.expect(not st.good_failed, f"good calls that did not complete: {st.good_failed!r}"))
        s.check("rotation.client.every_mint_succeeded_with_a_configured_key",
                lambda: h.expect(not st.mint_failed and not st.mint_wrong_kid,
                                 f"GenerateToken failed: {st.mint_failed!r}; signed with a key not configured: "
                                 f"{st.mint_wrong_kid!r}"))
        s.check("rotation.client.no_call_accepted_with_a_key_not_configured",
                lambda: h.expect(not st.bad_accepted, f"accepted: {st.bad_accepted!r}"))

    def log_checks(self) -> None:
        h = self.h
        # One reload per step on each replica (and one more on replica 0: the restored file); the
        # polling replica does not reload the same files twice.
        expected = [3 + (1 if r.index == 0 else 0) for r in self.replicas]
        if self.broken is None:
            self.s.check("rotation.logs.one_reload_per_change",
                         lambda: h.expect_equal("reloads logged per replica",
                                                [r.reloads_logged() for r in self.replicas], expected))

        def clean():
            for r in self.replicas:
                text = r.process.log_text()
                for token in self.tokens:
                    for needle in [token] + token.split(".")[1:]:
                        h.expect(len(needle) < 16 or needle not in text, f"{r.name}: a user token is in the log")
                for line in self.secret_lines:
                    h.expect(line not in text, f"{r.name}: private key material is in the log")

        self.s.check("rotation.logs.no_tokens_or_keys", clean)

    def stop(self) -> None:
        self.stop_clients()
        for r in self.replicas:
            if r.process is not None:
                try:
                    r.process.stop()
                except Exception as e:  # keep stopping the rest
                    print(f"# could not stop {r.name}: {e}", flush=True)
        if self.executor is not None:
            self.executor.stop()

    def figures(self, seconds: float) -> None:
        st = self.stats
        print(f"# rotation: {REPLICAS} replicas (SIGHUP: {', '.join(r.name for r in self.replicas if not r.polling)}; "
              f"{POLL_SECONDS} s poll: {self.replicas[POLLING].name if self.replicas else '-'}), {CLIENT_THREADS} "
              f"client threads, {seconds:.1f}s", flush=True)
        print(f"# rotation calls: {st.made} ExecuteWorkflow made ({'/'.join(map(str, st.per_replica))} per replica), "
              f"{st.good} good, {st.good_refused.count} good refused, {st.uncertain} not counted (keys changing), "
              f"{st.bad} with a kid the replica surely lacked ({st.bad_accepted.count} accepted); "
              f"{st.minted} GenerateToken", flush=True)
        crossed = self.crossed_figures
        if crossed:
            print(f"# rotation step 2: {crossed.get((self.new_kid, self.old_kid), 0)} NEW tokens accepted by replicas "
                  f"still signing with OLD, {crossed.get((self.old_kid, self.new_kid), 0)} OLD tokens by replicas "
                  f"signing with NEW, between switches", flush=True)
        for step, times in self.effect.items():
            print(f"# rotation {step} reload-to-effect: SIGHUP {ms_figures(times['signal'])}; "
                  f"poll {ms_figures(times['poll'])}", flush=True)


def run(s, h, binary: str, log_dir) -> None:
    """The scenario; `h` is the interop_test module (its Suite, helpers and ServiceProcess)."""
    s.deadline = max(s.deadline, time.monotonic() + ROTATION_BUDGET)
    started = time.monotonic()
    failed_before = s.failed
    rotation = None
    try:
        rotation = Rotation(s, h, binary, Path(log_dir) / "rotation")
        rotation.setup()
        rotation.scenario()
    except Exception as e:
        s.fail("rotation.setup", f"{type(e).__name__}: {e}")
    finally:
        if rotation is not None:
            rotation.stop()
            rotation.client_checks()
            if rotation.replicas and all(r.process is not None for r in rotation.replicas):
                rotation.log_checks()
            if s.failed > failed_before:
                # The last lines of each log but the ordinary ones of every call.
                for r in rotation.replicas:
                    if r.process is not None:
                        lines = [line for line in r.process.log_text().splitlines()
                                 if not any(n in line for n in ROUTINE_LOG_LINES)]
                        for line in lines[-8:]:
                            print(f"# {r.name} | {line}", flush=True)
            rotation.figures(time.monotonic() - started)
    print(f"# rotation scenario: {time.monotonic() - started:.1f}s", flush=True)


def main(argv) -> int:
    """The scenario alone (interop/run.sh runs it as part of the whole suite):
    `python interop/rotation_test.py BINARY`."""
    import interop_test as h

    return h.run_alone(argv, run, "dws-rotation-")


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
