"""Offline checks of the deployment files against the service they deploy, for the interop suite.

`interop_test.py` calls `run(suite, helpers, binary, log_dir)` after its other modules; the checks
land in the same `N passed, N failed` line. `python interop/deploy_test.py BINARY` runs them alone.
No cluster, no Docker engine and no network are needed: the files are read, and compared with what
the code says (the source files, and the binary itself):

* deploy/kubernetes/*.yaml parse, the kustomization lists them all (but the example Secret, which
  must never be applied over the real one), and `kubectl kustomize` renders them when kubectl is
  on the PATH;
* every environment variable the service's container sets is one `app/src/config.rs` reads (an
  `ENV_*` constant), none carries a key (keys are files, so that they can be reloaded);
* every key of the ConfigMap's TOML is a field of `FileConfig` and its sections in config.rs;
* every container, Service, probe, NetworkPolicy and scrape port is the port the service listens
  on with that environment and file (or its default, from config.rs);
* every gRPC probe asks for a health entry `app/src/readiness.rs` sets, readiness for `""`, liveness
  and start-up for one that stays SERVING whenever the process answers;
* the Secret is mounted whole (no subPath, which the kubelet never refreshes) where the TOML looks
  for the key files, the example Secret holds no key, the pods and containers run as non-root
  with a read-only root and no capabilities, the grace periods nest, selectors match;
* the real binary starts with the ConfigMap's TOML (its key paths rewritten to keys freshly made
  by `duo-workflow-service keys generate`) and the Deployment's environment (its ports, provider
  URLs and executor moved to loopback): every probe's health entry answers SERVING, the published
  JWKS holds the two generated keys, and the log lines are JSON;
* deploy/Dockerfile's ENTRYPOINT is the binary Cargo builds with a subcommand it has, its builder
  is at least the workspace's rust-version, and the root .dockerignore keeps target/ and the
  virtualenvs out of the build context.
"""

import ipaddress
import json
import re
import shutil
import subprocess
import time
import tomllib
import urllib.parse
from pathlib import Path

import yaml

DEPLOY_BUDGET = 30.0  # seconds granted to these checks on top of the suite's own budget

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CONFIG_RS = REPO / "app" / "src" / "config.rs"
SERVER_RS = REPO / "app" / "src" / "server.rs"
# Where the health entries are set (server.rs keeps their names: health_name, the constants).
READINESS_RS = REPO / "app" / "src" / "readiness.rs"
METHOD_RS = REPO / "domain" / "src" / "method.rs"
AUTHORITY_RS = REPO / "adapters" / "src" / "authority.rs"

SERVICE = "duo-workflow-service"  # the Deployment (and its container) of this service
EXECUTOR = "duo-workflow-executor"  # GitLab's Python service behind it
EXAMPLE_SECRET = "authority-keys.secret.example.yaml"

# Variables the service's container may set that config.rs does not read: none today. A variable
# added for Kubernetes' sake only (not the service's) belongs here, by name.
KUBERNETES_ONLY_ENV = frozenset()


class Code:
    """What the source says: variable names, defaults, the file's keys, health entries."""

    def __init__(self, h):
        self.h = h
        config = CONFIG_RS.read_text()
        self.config_rs = config
        self.env = dict(re.findall(r'pub const (ENV_\w+): &str = "([^"]*)";', config))
        self.env_names = set(self.env.values())
        defaults = dict(re.findall(r"pub const (DEFAULT_\w*PORT): u16 = (\d+);", config))
        self.defaults = {k: int(v) for k, v in defaults.items()}
        for want in ("DEFAULT_PORT", "DEFAULT_HTTP_PORT", "DEFAULT_METRICS_PORT"):
            h.expect(want in self.defaults, f"config.rs has no {want}")
        for want in ("ENV_PORT", "ENV_HTTP_PORT", "ENV_METRICS_ADDR", "ENV_METRICS_PORT", "ENV_SIGNING_KEY",
                     "ENV_VALIDATION_KEY", "ENV_UPSTREAM_URL", "ENV_SHUTDOWN_GRACE_PERIOD", "ENV_AUTH_ENABLED",
                     "ENV_LOG_JSON", "ENV_OIDC_GITLAB_URL", "ENV_AIGW_GITLAB_URL", "ENV_OIDC_CUSTOMER_PORTAL_URL",
                     "ENV_SERVICE_NAME", "ENV_TLS_ENABLED"):
            h.expect(want in self.env, f"config.rs has no {want}")
        self.structs = self._structs(config)
        self.key_source_types = self._key_source_types(config)
        h.expect("FileConfig" in self.structs, "config.rs has no FileConfig struct")

    def var(self, const: str) -> str:
        return self.env[const]

    @staticmethod
    def _structs(text: str) -> dict:
        """`pub struct Name { pub field: Type, ... }` → {Name: {field: Type}}. Fields renamed by
        serde would make the names wrong: the check refuses to guess."""
        structs = {}
        for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            if "rename" in body or "flatten" in body:
                raise CodeChanged(f"config.rs: struct {name} renames or flattens fields; teach deploy_test.py")
            structs[name] = dict(re.findall(r"^\s*pub (\w+): ([^\n]+?),\s*$", body, re.M))
        return structs

    @staticmethod
    def _key_source_types(text: str) -> dict:
        """The tagged enum of `[[key_sources]]`: {type: struct}."""
        match = re.search(r'#\[serde\(tag = "(\w+)", rename_all = "snake_case"\)\]\s*pub enum KeySourceConfig \{(.*?)\n\}',
                          text, re.S)
        if match is None:
            raise CodeChanged("config.rs: KeySourceConfig is no longer a snake_case enum tagged by `type`")
        variants = re.findall(r"^\s*(\w+)\((\w+)\),", match.group(2), re.M)
        snake = lambda n: re.sub(r"(?<!^)(?=[A-Z])", "_", n).lower()  # noqa: E731
        return {"tag": match.group(1), "types": {snake(v): s for v, s in variants}}

    def file_errors(self, table: dict, struct: str = "FileConfig", where: str = "") -> list:
        """Keys of `table` that `struct` (and the structs of its fields) does not have."""
        errors = []
        fields = self.structs.get(struct)
        if fields is None:
            return [f"{where or '(top)'}: no struct {struct} in config.rs"]
        for key, value in table.items():
            path = f"{where}.{key}" if where else key
            if key not in fields:
                errors.append(f"{path}: no field {key!r} in {struct} (config.rs)")
                continue
            inner = re.sub(r"^(Option|Vec)<(.*)>$", r"\2", fields[key].strip())
            inner = re.sub(r"^(Option|Vec)<(.*)>$", r"\2", inner)
            if inner == "KeySourceConfig":
                tag, types = self.key_source_types["tag"], self.key_source_types["types"]
                for i, source in enumerate(value):
                    kind = source.get(tag)
                    if kind not in types:
                        errors.append(f"{path}[{i}].{tag}: {kind!r} is none of {sorted(types)}")
                        continue
                    rest = {k: v for k, v in source.items() if k != tag}
                    errors += self.file_errors(rest, types[kind], f"{path}[{i}]")
            elif inner in self.structs:
                if not isinstance(value, dict):
                    errors.append(f"{path}: a table ({inner}) expected")
                else:
                    errors += self.file_errors(value, inner, path)
        return errors

    def health_names(self, static_sources: list, remote_sources: list) -> set:
        """The entries readiness.rs (or server.rs) sets in the health service, resolved to names: string literals,
        server.rs's own `&str` constants, `Rpc::SERVICE` (domain/src/method.rs) and `health_name(source)` for every key source the
        configuration can have (the local authority, the two built-in ones, the file's)."""
        server = SERVER_RS.read_text()
        setters = server + (READINESS_RS.read_text() if READINESS_RS.exists() else "")
        args = re.findall(r"set_service_status\(\s*([^,]+?)\s*,", setters)
        self.h.expect(args, "readiness.rs and server.rs set no health entry (set_service_status)")
        prefix = re.search(r'fn health_name\(\w+: &str\) -> String \{\s*format!\("([^"{]*)\{\w+\}"\)', server)
        self.h.expect(prefix is not None, "server.rs: health_name is no longer format!(\"<prefix>{source}\")")
        authority = re.search(r'pub const KEY_SOURCE_NAME: &str = "([^"]+)";', AUTHORITY_RS.read_text())
        self.h.expect(authority is not None, "authority.rs has no KEY_SOURCE_NAME")
        builtin = re.findall(r'pub const SOURCE_\w+: &str = "([^"]+)";', self.config_rs)
        sources = [authority.group(1)] + builtin + list(static_sources) + list(remote_sources)
        names = set()
        for arg in args:
            if re.fullmatch(r'"[^"]*"', arg):
                names.add(arg[1:-1])
            elif arg == "Rpc::SERVICE":
                service = re.search(r"pub const SERVICE: &'static str = \"([^\"]+)\";", METHOD_RS.read_text())
                self.h.expect(service is not None, "method.rs has no Rpc::SERVICE")
                names.add(service.group(1))
            elif arg.startswith("health_name("):
                names.update(prefix.group(1) + s for s in sources)
            elif re.fullmatch(r"[A-Z][A-Z0-9_]*", arg):
                const = re.search(rf'pub const {arg}: &str = "([^"]*)";', server)
                self.h.expect(const is not None, f"server.rs has no const {arg}")
                names.add(const.group(1))
            else:
                raise self.h.Failure(f"server.rs sets a health entry deploy_test.py cannot resolve: {arg}")
        self.authority_entry = prefix.group(1) + authority.group(1)
        self.static_entries = {prefix.group(1) + s for s in [authority.group(1)] + list(static_sources)}
        return names


class CodeChanged(Exception):
    """The source no longer has the shape these checks read (a struct renaming fields, ...)."""


class Manifests:
    """deploy/kubernetes: the kustomization, its objects, the TOML of the ConfigMap."""

    def __init__(self, h):
        self.h = h
        self.kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
        self.files = {}  # name → [objects]
        for path in sorted(K8S.glob("*.yaml")):
            if path.name == "kustomization.yaml":
                continue
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            self.files[path.name] = docs
        self.resources = self.kustomization.get("resources", [])
        self.objects = [o for name in self.resources for o in self.files.get(name, [])]
        self.example_secret = self.one(self.files.get(EXAMPLE_SECRET, []), "Secret", None)
        # The TOML: a configMapGenerator file, or a ConfigMap's data.
        self.configmaps = {}
        for gen in self.kustomization.get("configMapGenerator", []):
            data = {}
            for f in gen.get("files", []):
                key, _, path = f.partition("=") if "=" in f else (Path(f).name, "", f)
                data[key] = (K8S / path).read_text()
            self.configmaps[gen["name"]] = data
        for o in self.objects:
            if o.get("kind") == "ConfigMap":
                self.configmaps[o["metadata"]["name"]] = o.get("data", {})

    def of_kind(self, kind: str) -> list:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, objects, kind, name):
        found = [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]
        return found[0] if len(found) == 1 else None

    def get(self, kind: str, name: str) -> dict:
        o = self.one(self.objects, kind, name)
        if o is None:
            raise self.h.Failure(f"the kustomization has no single {kind} {name}")
        return o

    def deployment(self, name: str) -> dict:
        return self.get("Deployment", name)

    def container(self, deployment: str) -> dict:
        containers = self.deployment(deployment)["spec"]["template"]["spec"]["containers"]
        named = [c for c in containers if c["name"] == deployment] or containers[:1]
        return named[0]

    def env(self, deployment: str) -> dict:
        return {e["name"]: e.get("value") for e in self.container(deployment).get("env", [])}

    def config_path(self) -> tuple:
        """(path of --config in the container's args, ConfigMap name, key, TOML text)."""
        c = self.container(SERVICE)
        args = c.get("args", [])
        self.h.expect("--config" in args, f"the {SERVICE} container is not given --config: {args}")
        path = Path(args[args.index("--config") + 1])
        spec = self.deployment(SERVICE)["spec"]["template"]["spec"]
        for mount in c.get("volumeMounts", []):
            if path.parent == Path(mount["mountPath"]):
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                name = volume.get("configMap", {}).get("name")
                self.h.expect(name in self.configmaps, f"{path} is on volume {mount['name']}, not a ConfigMap of the kustomization")
                self.h.expect(path.name in self.configmaps[name], f"ConfigMap {name} has no key {path.name}")
                return path, name, path.name, self.configmaps[name][path.name]
        raise self.h.Failure(f"no volume is mounted where --config {path} points")

    def toml(self) -> dict:
        return tomllib.loads(self.config_path()[3])


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def effective_ports(code: Code, env: dict, toml: dict) -> dict:
    """The ports the service listens on with this environment and file (the variables win)."""

    def pick(const, file_value, default):
        v = env.get(code.var(const))
        if v is not None and v.strip():
            return int(v)
        return file_value if file_value is not None else code.defaults[default]

    return {
        "grpc": pick("ENV_PORT", toml.get("port"), "DEFAULT_PORT"),
        "keys": pick("ENV_HTTP_PORT", toml.get("http_port"), "DEFAULT_HTTP_PORT"),
        "metrics": pick("ENV_METRICS_PORT", toml.get("metrics", {}).get("port"), "DEFAULT_METRICS_PORT"),
    }


def port_of(container: dict, port) -> int:
    """A container port by number or name."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise KeyError(port)


def grpc_probes(container: dict) -> dict:
    return {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container}


def file_keys(table, prefix=""):
    """(dotted key, value) of every `*_file` key in a parsed TOML document, arrays of tables too."""
    if isinstance(table, dict):
        for k, v in table.items():
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, (dict, list)):
                yield from file_keys(v, path)
            elif k.endswith("_file"):
                yield path, v
    elif isinstance(table, list):
        for i, v in enumerate(table):
            yield from file_keys(v, f"{prefix}[{i}]")


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def check_parse(h, m: Manifests) -> None:
    for name, docs in m.files.items():
        h.expect(docs, f"{name} holds no object")
        for d in docs:
            h.expect(isinstance(d, dict) and d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"),
                     f"{name}: an object without apiVersion, kind or metadata.name: {str(d)[:80]}")
    listed, present = set(m.resources), set(m.files)
    h.expect(listed <= present, f"kustomization.yaml lists missing files: {sorted(listed - present)}")
    h.expect(EXAMPLE_SECRET not in listed,
             f"{EXAMPLE_SECRET} is in the kustomization: applying it would overwrite the real Secret with placeholders")
    h.expect(present - listed == {EXAMPLE_SECRET}, f"files the kustomization leaves out: {sorted(present - listed - {EXAMPLE_SECRET})}")
    for name, data in m.configmaps.items():
        for key, text in data.items():
            if key.endswith(".toml"):
                tomllib.loads(text)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("# deploy: kubectl not on the PATH: `kubectl kustomize` not tried", flush=True)
        return
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=20)
    h.expect(done.returncode == 0, f"kubectl kustomize: {done.stderr.strip()[:300]}")
    kinds = sorted({d["kind"] for d in yaml.safe_load_all(done.stdout) if d})
    h.expect({"Deployment", "Service", "ConfigMap"} <= set(kinds), f"kustomize rendered only {kinds}")


def check_env(h, code: Code, m: Manifests) -> None:
    c = m.container(SERVICE)
    h.expect("envFrom" not in c, "envFrom hides which variables are set: name each one")
    names = [e["name"] for e in c.get("env", [])]
    unknown = sorted(set(names) - code.env_names - KUBERNETES_ONLY_ENV)
    h.expect(not unknown, f"variables config.rs does not read (no ENV_* constant): {unknown}")
    h.expect(len(names) == len(set(names)), f"a variable set twice: {names}")
    keys = {code.var("ENV_SIGNING_KEY"), code.var("ENV_VALIDATION_KEY")} & set(names)
    h.expect(not keys, f"{sorted(keys)} set: a key given by variable cannot be reloaded; give it as a file")
    for e in c.get("env", []):
        h.expect("value" in e and "valueFrom" not in e, f"{e['name']}: from valueFrom; the service's variables carry no secret")
    env = m.env(SERVICE)
    # The executor must be this namespace's executor Service, and the auth switch stays on.
    h.expect(env.get(code.var("ENV_AUTH_ENABLED"), "true").strip().lower() == "true", "authentication is off")
    h.expect(env.get(code.var("ENV_LOG_JSON")) == "true", "logs are not JSON")
    for const in ("ENV_OIDC_GITLAB_URL", "ENV_OIDC_CUSTOMER_PORTAL_URL"):
        url = env.get(code.var(const))
        h.expect(url and urllib.parse.urlsplit(url).scheme == "https", f"{code.var(const)}={url!r}: not an https URL")


def check_config_keys(h, code: Code, m: Manifests) -> None:
    toml = m.toml()
    errors = code.file_errors(toml)
    h.expect(not errors, "; ".join(errors))
    jwt = toml.get("self_signed_jwt", {})
    h.expect(jwt.get("signing_key_file"), "the TOML names no self_signed_jwt.signing_key_file")
    h.expect("signing_key" not in jwt and "validation_key" not in jwt, "a key inline in the ConfigMap")


def check_ports(h, code: Code, m: Manifests) -> None:
    env = m.env(SERVICE)
    toml = m.toml()
    want = effective_ports(code, env, toml)
    c = m.container(SERVICE)
    declared = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    h.expect(declared == want, f"container ports {declared}, the service listens on {want}")
    addr = env.get(code.var("ENV_METRICS_ADDR")) or toml.get("metrics", {}).get("addr") or "127.0.0.1"
    h.expect(not ipaddress.ip_address(addr).is_loopback,
             f"{code.var('ENV_METRICS_ADDR')}={addr}: on loopback, Prometheus cannot scrape it")
    for kind, probe in grpc_probes(c).items():
        port = probe.get("grpc", probe.get("tcpSocket", probe.get("httpGet", {}))).get("port")
        h.expect(port_of(c, port) == want["grpc"], f"{kind} probes port {port}, gRPC is {want['grpc']}")
    # Services: every target port is a container port; the client-facing one has gRPC and keys,
    # and the operator port only on a Service of its own.
    pod_labels = m.deployment(SERVICE)["spec"]["template"]["metadata"]["labels"]
    scrape = []
    for svc in m.of_kind("Service"):
        if not labels_match(svc["spec"].get("selector"), pod_labels):
            continue
        targets = {port_of(c, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]}
        h.expect(targets <= set(want.values()), f"Service {svc['metadata']['name']} targets {targets}")
        if want["metrics"] in targets:
            h.expect(targets == {want["metrics"]},
                     f"Service {svc['metadata']['name']} carries the operator port beside client ports")
            scrape.append(svc)
        else:
            h.expect({want["grpc"], want["keys"]} <= targets, f"Service {svc['metadata']['name']} targets {targets}")
    h.expect(scrape, "no Service for the operator listener (metrics)")
    for svc in scrape:
        a = svc["metadata"].get("annotations", {})
        h.expect(a.get("prometheus.io/scrape") == "true" and a.get("prometheus.io/port") == str(want["metrics"])
                 and a.get("prometheus.io/path", "/metrics") == "/metrics",
                 f"Service {svc['metadata']['name']}: scrape annotations {a}")
    # The NetworkPolicy: the operator port only from somewhere named, the others from anywhere.
    policy = next((p for p in m.of_kind("NetworkPolicy") if labels_match(p["spec"]["podSelector"].get("matchLabels"), pod_labels)), None)
    h.expect(policy is not None, f"no NetworkPolicy selects the {SERVICE} pods")
    h.expect("Ingress" in policy["spec"].get("policyTypes", []), "the NetworkPolicy does not restrict ingress")
    opened = {}
    for rule in policy["spec"].get("ingress", []):
        h.expect(rule.get("ports"), "an ingress rule without ports opens every port")
        for p in rule["ports"]:
            # Restricted only if every rule that opens the port names its peers.
            port = port_of(c, p["port"])
            opened[port] = opened.get(port, True) and bool(rule.get("from"))
    h.expect(set(opened) <= set(want.values()), f"NetworkPolicy opens {sorted(opened)}, the service listens on {want}")
    h.expect(opened.get(want["metrics"]) is True, f"port {want['metrics']} (operator) is not restricted to named peers")
    h.expect(want["grpc"] in opened and want["keys"] in opened, f"the NetworkPolicy does not let clients reach {want}")
    # The executor: its Service is what DUO_WORKFLOW_UPSTREAM__URL names, its port is the one it listens on.
    url = urllib.parse.urlsplit(env[code.var("ENV_UPSTREAM_URL")])
    ex = m.container(EXECUTOR)
    ex_env = m.env(EXECUTOR)
    ex_port = int(ex_env.get("PORT", code.defaults["DEFAULT_PORT"]))
    h.expect({p["containerPort"] for p in ex.get("ports", [])} == {ex_port}, f"executor ports vs its PORT {ex_port}")
    ex_svc = m.get("Service", url.hostname.split(".")[0])
    ex_labels = m.deployment(EXECUTOR)["spec"]["template"]["metadata"]["labels"]
    h.expect(labels_match(ex_svc["spec"]["selector"], ex_labels), f"Service {url.hostname} does not select the executor")
    ports = {p["port"]: port_of(ex, p.get("targetPort", p["port"])) for p in ex_svc["spec"]["ports"]}
    h.expect(ports.get(url.port) == ex_port, f"{url.geturl()}: Service port {url.port} → {ports.get(url.port)}, executor listens on {ex_port}")
    for kind, probe in grpc_probes(ex).items():
        port = probe.get("grpc", probe.get("tcpSocket", probe.get("httpGet", {}))).get("port")
        h.expect(port_of(ex, port) == ex_port, f"executor {kind} probes port {port}")
    if "Egress" in policy["spec"].get("policyTypes", []):
        h.expect(any(labels_match(t.get("podSelector", {}).get("matchLabels"), ex_labels)
                     and any(port_of(ex, p["port"]) == ex_port for p in rule.get("ports", []))
                     for rule in policy["spec"].get("egress", []) for t in rule.get("to", [])),
                 "the NetworkPolicy's egress does not let the service reach the executor")
    ex_policy = next((p for p in m.of_kind("NetworkPolicy") if labels_match(p["spec"]["podSelector"].get("matchLabels"), ex_labels)), None)
    h.expect(ex_policy is not None, "no NetworkPolicy guards the executor")
    sources = [f for rule in ex_policy["spec"].get("ingress", []) for f in rule.get("from", [None])]
    h.expect(sources and all(f and set(f) == {"podSelector"} and labels_match(f["podSelector"].get("matchLabels"), pod_labels)
                             for f in sources),
             f"the executor is reachable from more than the {SERVICE} pods: {sources}")


def check_probes(h, code: Code, m: Manifests) -> None:
    toml = m.toml()
    static = [s["name"] for s in toml.get("key_sources", []) if s.get("type") == "static"]
    remote = [s["name"] for s in toml.get("key_sources", []) if s.get("type") != "static"]
    names = code.health_names(static, remote)
    c = m.container(SERVICE)
    probes = grpc_probes(c)
    h.expect(set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}, f"probes: {sorted(probes)}")
    for kind, probe in probes.items():
        h.expect("grpc" in probe, f"{kind} is not a native gRPC probe")
        service = probe["grpc"].get("service", "")
        h.expect(service in names, f"{kind} asks for health entry {service!r}; server.rs sets {sorted(names)}")
    h.expect(probes["readinessProbe"]["grpc"].get("service", "") == "", "readiness is not the overall entry \"\"")
    for kind in ("livenessProbe", "startupProbe"):
        service = probes[kind]["grpc"].get("service", "")
        h.expect(service in code.static_entries,
                 f"{kind} asks for {service!r}, which can be NOT_SERVING while the process is fine (shutdown, a provider's "
                 f"outage): use a static entry ({sorted(code.static_entries)})")
    spec = m.deployment(SERVICE)["spec"]["template"]["spec"]
    env = m.env(SERVICE)
    grace = float(env.get(code.var("ENV_SHUTDOWN_GRACE_PERIOD"))
                  or toml.get("limits", {}).get("shutdown_grace_seconds", 30))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    h.expect(spec.get("terminationGracePeriodSeconds", 30) > grace + pre_stop,
             f"terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds', 30)} is not above the preStop "
             f"sleep {pre_stop} s + the service's grace period {grace} s")
    ex_env = m.env(EXECUTOR)
    auth = ex_env.get(code.var("ENV_AUTH_ENABLED"), "true").strip().lower()
    if auth != "false":
        ex = m.container(EXECUTOR)
        refs = {e["name"] for e in ex.get("env", []) if "valueFrom" in e}
        h.expect(code.var("ENV_SIGNING_KEY") in refs and ex_env.get(code.var("ENV_SERVICE_NAME"))
                 == env.get(code.var("ENV_SERVICE_NAME")),
                 "the executor's auth is on without this service's signing key and service name")


def check_security(h, code: Code, m: Manifests) -> None:
    uid = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)
    h.expect(uid is not None, "the Dockerfile's USER is not numeric")
    for d in m.of_kind("Deployment"):
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        h.expect(spec.get("automountServiceAccountToken") is False, f"{name}: a service account token is mounted")
        h.expect(spec.get("enableServiceLinks") is False, f"{name}: service links add variables beside the service's own")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            h.expect(sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot not set")
            h.expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
            h.expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem")
            h.expect(not sc.get("privileged"), f"{where}: privileged")
            h.expect("ALL" in sc.get("capabilities", {}).get("drop", []) and not sc.get("capabilities", {}).get("add"),
                     f"{where}: capabilities not all dropped")
            for mount in c.get("volumeMounts", []):
                h.expect("subPath" not in mount and "subPathExpr" not in mount,
                         f"{where}: {mount['name']} mounted with subPath, which the kubelet never refreshes")
        if name == SERVICE:
            user = m.container(SERVICE).get("securityContext", {}).get("runAsUser", pod.get("runAsUser"))
            h.expect(user == int(uid.group(1)), f"{name} runs as {user}, the image's USER is {uid.group(1)}")


def check_key_files(h, code: Code, m: Manifests) -> None:
    toml = m.toml()
    jwt = toml.get("self_signed_jwt", {})
    files = [Path(jwt[k]) for k in ("signing_key_file", "validation_key_file") if k in jwt]
    c = m.container(SERVICE)
    spec = m.deployment(SERVICE)["spec"]["template"]["spec"]
    mounts = {Path(v["mountPath"]): v for v in c.get("volumeMounts", [])}
    dirs = {f.parent for f in files}
    h.expect(len(dirs) == 1 and next(iter(dirs)) in mounts, f"the key files {files} are not in one mounted directory")
    mount = mounts[next(iter(dirs))]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    h.expect("secret" in volume, f"the key files are on volume {mount['name']}, not a Secret")
    secret = volume["secret"]
    h.expect(not secret.get("optional"), "the keys' Secret is optional")
    mode = secret.get("defaultMode", 0o644)
    h.expect(mode & 0o007 == 0, f"the key files are readable by others (mode {mode:o})")
    h.expect(mode & 0o040 == 0 or spec.get("securityContext", {}).get("fsGroup") is not None,
             "group-readable key files without an fsGroup: uid 65532 cannot read them")
    if "items" in secret:
        h.expect({i["path"] for i in secret["items"]} >= {f.name for f in files}, "the Secret's items miss a key file")
    example = m.example_secret
    h.expect(example is not None, f"{EXAMPLE_SECRET} holds no Secret")
    h.expect(example["metadata"]["name"] == secret["secretName"], f"the example Secret is not {secret['secretName']}")
    data = {**example.get("data", {}), **example.get("stringData", {})}
    h.expect(set(data) >= {f.name for f in files}, f"the example Secret's keys {sorted(data)} miss {[f.name for f in files]}")
    text = (K8S / EXAMPLE_SECRET).read_text()
    h.expect("-----BEGIN" not in text and not example.get("data"), "the example Secret holds key material")


def check_workload(h, m: Manifests) -> None:
    c = m.container(SERVICE)
    labels = m.deployment(SERVICE)["spec"]["template"]["metadata"]["labels"]
    h.expect(labels_match(m.deployment(SERVICE)["spec"]["selector"]["matchLabels"], labels), "the Deployment selects other pods")
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        h.expect(len(m.of_kind(kind)) >= 1, f"no {kind}")
    pdb = m.get("PodDisruptionBudget", SERVICE)
    h.expect(labels_match(pdb["spec"]["selector"]["matchLabels"], labels) and pdb["spec"].get("maxUnavailable") == 1,
             "the PodDisruptionBudget does not take one replica of the service at a time")
    hpa = m.get("HorizontalPodAutoscaler", SERVICE)
    ref = hpa["spec"]["scaleTargetRef"]
    h.expect(hpa["apiVersion"] == "autoscaling/v2" and ref["kind"] == "Deployment" and ref["name"] == SERVICE,
             f"the HPA scales {ref}")
    h.expect(hpa["spec"]["minReplicas"] <= m.deployment(SERVICE)["spec"]["replicas"] <= hpa["spec"]["maxReplicas"],
             "the Deployment's replicas are outside the HPA's range")
    h.expect(any(x.get("resource", {}).get("name") == "cpu" for x in hpa["spec"]["metrics"]), "the HPA does not follow CPU")
    h.expect(c.get("resources", {}).get("requests", {}).get("cpu"), "no CPU request: the HPA's utilisation has no base")


def check_dockerfile(h, code: Code, binary: str) -> None:
    text = DOCKERFILE.read_text()
    entry = re.findall(r"^ENTRYPOINT (.+)$", text, re.M)
    h.expect(len(entry) == 1, f"{len(entry)} ENTRYPOINT lines")
    entry = json.loads(entry[0])
    bins = tomllib.loads((REPO / "app" / "Cargo.toml").read_text())["bin"]
    h.expect(len(entry) >= 2 and Path(entry[0]).name in {b["name"] for b in bins},
             f"ENTRYPOINT {entry} does not run the binary Cargo builds ({[b['name'] for b in bins]})")
    helped = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    commands = set(re.findall(r"^  ([a-z][a-z-]*)\s", helped.stdout, re.M))
    h.expect(entry[1] in commands, f"ENTRYPOINT subcommand {entry[1]!r}; the binary has {sorted(commands)}")
    served = subprocess.run([binary, entry[1], "--help"], capture_output=True, text=True, timeout=10)
    h.expect(served.returncode == 0 and "--config" in served.stdout, f"`{entry[1]} --help` shows no --config")
    h.expect(f"COPY --from=builder /out/{Path(entry[0]).name} {entry[0]}" in text, "the ENTRYPOINT's binary is not what the builder copied")
    h.expect(re.search(r"cargo build --release --locked -p duo-workflow-service\b", text), "not a --locked release build of the binary's package")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    rust = re.fullmatch(r"rust:(\d+)\.(\d+)(?:\.(\d+))?-(\w+)", args.get("RUST_IMAGE", ""))
    h.expect(rust is not None, f"the builder is not an official rust:X.Y.Z-<debian> image: {args.get('RUST_IMAGE')}")
    needed = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    have, need = tuple(int(x) for x in rust.groups()[:2]), tuple(int(x) for x in needed.split(".")[:2])
    h.expect(have >= need, f"builder Rust {have} is older than the workspace's rust-version {needed}")
    runtime = args.get("RUNTIME_IMAGE", "")
    h.expect(runtime.startswith("gcr.io/distroless/cc-") and runtime.endswith(":nonroot"), f"runtime image {runtime}")
    debian = {"bookworm": "debian12", "trixie": "debian13"}.get(rust.group(4))
    h.expect(debian and f"cc-{debian}" in runtime, f"builder {rust.group(4)} and runtime {runtime}: not the same glibc")
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    defaults = {code.defaults[k] for k in ("DEFAULT_PORT", "DEFAULT_HTTP_PORT", "DEFAULT_METRICS_PORT")}
    h.expect(exposed == defaults, f"EXPOSE {sorted(exposed)}, the service's default ports {sorted(defaults)}")
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")}
    for want in ("target", ".venv-interop", ".git"):
        h.expect(want in ignored, f".dockerignore does not leave out {want}/")
    h.expect("fuzz" in ignored or "fuzz/target" in ignored, ".dockerignore does not leave out fuzz/target/")


def check_starts(h, code: Code, m: Manifests, binary: str, log_dir: Path) -> None:
    """The real binary with the ConfigMap's TOML and the Deployment's environment."""
    work = log_dir / "deploy"
    work.mkdir(exist_ok=True)
    text = m.config_path()[3]
    toml = tomllib.loads(text)
    kids = {}
    for key, path in file_keys(toml):
        if key not in ("self_signed_jwt.signing_key_file", "self_signed_jwt.validation_key_file"):
            raise h.Failure(f"{key}: deploy_test.py cannot stand in for this file yet")
        local = work / Path(path).name
        made = subprocess.run([binary, "keys", "generate", "--out", str(local)], capture_output=True, text=True, timeout=60)
        h.expect(made.returncode == 0, f"keys generate: {made.stderr.strip()}")
        kid = re.search(r"\(kid ([^)]+)\)", made.stdout)
        h.expect(kid is not None, f"keys generate printed no kid: {made.stdout!r}")
        kids[key] = kid.group(1)
        h.expect(text.count(f'"{path}"') == 1, f"{path} is not written once as a plain string in the TOML")
        text = text.replace(f'"{path}"', json.dumps(str(local)))
    config = work / "config.toml"
    config.write_text(text)
    # The Deployment's variables, less what reaches beyond this machine: the ports are the
    # helper's free ones, the operator listener stays on loopback, no provider or executor
    # outside (an empty URL disables a built-in source; nothing listens on the executor's port).
    env = m.env(SERVICE)
    for var in ("ENV_PORT", "ENV_HTTP_PORT", "ENV_METRICS_PORT"):
        env.pop(code.var(var), None)
    env[code.var("ENV_METRICS_ADDR")] = "127.0.0.1"
    for var in ("ENV_OIDC_GITLAB_URL", "ENV_OIDC_CUSTOMER_PORTAL_URL"):
        env[code.var(var)] = ""
    env[code.var("ENV_UPSTREAM_URL")] = f"http://127.0.0.1:{h.free_port()}"
    process = h.ServiceProcess("deploy", binary, env, work, listen="127.0.0.1", config=config)
    try:
        process.wait_ready()
        for kind, probe in grpc_probes(m.container(SERVICE)).items():
            h.expect_health(process, probe["grpc"].get("service", ""), "SERVING", timeout=5.0)
        status, _, body = h.http_get(f"http://127.0.0.1:{process.http_port}/oauth/discovery/keys")
        published = {k.get("kid") for k in json.loads(body)["keys"]}
        h.expect(status == 200 and published == set(kids.values()),
                 f"the published JWKS holds {sorted(published)}, the generated keys are {kids}")
    finally:
        process.stop()
    lines = [line for line in process.log_text().splitlines() if line.strip()]
    h.expect(lines, "the service logged nothing")
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise h.Failure(f"a log line that is not JSON: {line[:120]}")
    errors = [r for r in records if r.get("level") == "ERROR"]
    h.expect(not errors, f"errors logged: {errors[:2]}")


def run(s, h, binary: str, log_dir) -> None:
    """The checks; `h` is the interop_test module (its Suite, helpers and ServiceProcess)."""
    s.deadline = max(s.deadline, time.monotonic() + DEPLOY_BUDGET)
    started = time.monotonic()
    log_dir = Path(log_dir)
    try:
        code = Code(h)
        m = Manifests(h)
    except (CodeChanged, OSError, yaml.YAMLError, tomllib.TOMLDecodeError, h.Failure) as e:
        s.fail("deploy.setup", f"{type(e).__name__}: {e}")
        return
    s.check("deploy.manifests_parse", lambda: check_parse(h, m))
    s.check("deploy.env_names_are_the_services", lambda: check_env(h, code, m))
    s.check("deploy.config_keys_are_file_config_fields", lambda: check_config_keys(h, code, m))
    s.check("deploy.ports_match_the_service", lambda: check_ports(h, code, m))
    s.check("deploy.probes_name_health_entries", lambda: check_probes(h, code, m))
    s.check("deploy.security_context", lambda: check_security(h, code, m))
    s.check("deploy.key_files_from_the_secret", lambda: check_key_files(h, code, m))
    s.check("deploy.selectors_pdb_hpa", lambda: check_workload(h, m))
    s.check("deploy.dockerfile_entrypoint", lambda: check_dockerfile(h, code, binary))
    s.check("deploy.binary_starts_with_the_manifests", lambda: check_starts(h, code, m, binary, log_dir))
    print(f"# deploy checks: {time.monotonic() - started:.1f}s", flush=True)


def main(argv) -> int:
    """These checks alone (interop/run.sh runs them as part of the whole suite):
    `python interop/deploy_test.py BINARY`."""
    import interop_test as h

    return h.run_alone(argv, run, "dws-deploy-")


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
