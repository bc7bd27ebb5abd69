"""The deployment artifacts are valid and agree with the code they deploy.

docker-compose.yml (checked by docker-compose itself), .env.example (against the settings the
processes read), the CloudFormation templates (cfn-lint, and the inline bootstrap-brokers function
run against a local HTTP server), the Kubernetes manifests (kubernetes-validate), the Dockerfile
(its health check run against a real ops server), the Grafana dashboard and the Prometheus alerts
(every metric they query exists). Needs no broker: only files, local sockets and, once, apt-get
to install the Debian docker-compose package when it is missing.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from falcon_lake.ops_server import OpsServer
from falcon_lake.settings import SettingsError, load_ingestor, load_publisher
from tests.support import free_port

# The first test may wait for apt-get to install docker-compose; the rest take seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CFN_DIR = ROOT / "deploy" / "cloudformation"
K8S_DIR = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "falcon-lake-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
VENV_BIN = Path(sys.executable).parent

# The services the README tells users about.
README_SERVICES = {"kafka", "topic-init", "ingestor", "publisher", "falcon-emulator", "cloudtrail-emulator", "moto"}
DEMO_SERVICES = {"falcon-emulator", "cloudtrail-emulator", "moto"}
DEMO_CHANNEL = "arn:aws:cloudtrail:us-east-1:123456789012:channel/demo"
# What boto3 reads itself (DESIGN.md: no project variables for those); .env.example may list them.
SDK_VARIABLES = re.compile(
    r"^AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN|REGION|DEFAULT_REGION|ENDPOINT_URL_\w+)$"
)
# Settings docker-compose.yml fixes for its own broker and ports instead of taking them from .env.
COMPOSE_PINNED = {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY", "METRICS_PORT"}
# TLS and MSK settings: the compose broker is plaintext, so compose does not pass them.
COMPOSE_NOT_APPLICABLE = {
    "KAFKA_TLS_CA_FILE",
    "KAFKA_TLS_CERT_FILE",
    "KAFKA_TLS_KEY_FILE",
    "KAFKA_TLS_KEY_PASSWORD",
    "KAFKA_TLS_SKIP_VERIFY",
    "KAFKA_TLS_ALLOW_INSECURE",
    "MSK_REGION",
}
SECRET_VARIABLES = {
    "FALCON_CLIENT_ID",
    "FALCON_CLIENT_SECRET",
    "KAFKA_TLS_KEY_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
}


# ---- helpers ---------------------------------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every environment variable falcon_lake/settings.py reads (the names passed to its _Env reads)."""
    tree = ast.parse((ROOT / "falcon_lake" / "settings.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"text", "required", "integer", "number", "flag", "items", "choice", "get"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.args[0].value)
        ):
            names.add(node.args[0].value)
    assert len(names) > 30, f"found only {sorted(names)} in settings.py: has its reading changed?"
    return names


def readme_variables() -> set[str]:
    readme = ROOT / "README.md"
    if not readme.exists():
        return set()
    return set(re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", readme.read_text()))


def env_example() -> dict[str, str]:
    """NAME -> value of .env.example, in file order; fails on anything but comments and NAME=value."""
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S*)", line)
        assert match, f".env.example:{number}: not NAME=value (no spaces, no inline comment): {line!r}"
        assert match.group(1) not in values, f".env.example:{number}: {match.group(1)} appears twice"
        values[match.group(1)] = match.group(2)
    return values


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def cfn_template(name: str) -> dict[str, Any]:
    from cfnlint.decode import decode

    template, matches = decode(str(CFN_DIR / name))
    assert not matches, [str(m) for m in matches]
    assert template is not None
    result: dict[str, Any] = template
    return result


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s_resource(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {K8S_DIR}")


def exposition_names() -> set[str]:
    """Every sample name the two processes can expose on /metrics (counters with _total, ...)."""
    from ingestor.metrics import IngestorMetrics
    from publisher.metrics import PublisherMetrics

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for metrics in (IngestorMetrics(), PublisherMetrics()):
        for family in metrics.registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def queried_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bfalcon_lake_[a-z0-9_]+", expr))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


# ---- docker-compose ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_compose() -> str:
    """The docker-compose (v1, Debian package) executable, installed with apt-get when missing."""
    found = shutil.which("docker-compose")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip("docker-compose is missing and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", "docker-compose"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:  # a fresh image has no package lists yet
        subprocess.run([apt, "update", "-qq"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    found = shutil.which("docker-compose")
    if result.returncode != 0 or not found:
        pytest.skip(
            "docker-compose is missing and `apt-get install -y docker-compose` failed: "
            + (result.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return found


def compose(executable: str, *args: str, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on the repository's file with a clean environment (no test variables leak
    into the interpolation), optionally with an explicit env file in place of ./.env."""
    command = [executable]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    command += [*args]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def resolved_compose(executable: str, env_file: Path, profile: str | None = None) -> dict[str, Any]:
    args = (["--profile", profile] if profile else []) + ["-f", str(COMPOSE_FILE), "config"]
    result = compose(executable, *args, env_file=env_file)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def test_compose_file_is_valid(docker_compose: str) -> None:
    result = compose(docker_compose, "-f", str(COMPOSE_FILE), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_file_is_valid_with_the_demo_profile(docker_compose: str) -> None:
    result = compose(docker_compose, "--profile", "demo", "-f", str(COMPOSE_FILE), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_has_every_service_the_readme_names() -> None:
    services = load_compose()["services"]
    assert set(services) >= README_SERVICES, f"missing: {sorted(README_SERVICES - set(services))}"
    for name in DEMO_SERVICES:
        assert services[name].get("profiles") == ["demo"], f"{name} belongs in the demo profile only"
    for name in README_SERVICES - DEMO_SERVICES:
        assert not services[name].get("profiles"), f"{name} must run without a profile"


def test_compose_kafka_is_single_node_kraft_with_a_health_check() -> None:
    services = load_compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(env["KAFKA_NODE_ID"]) in str(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    init = services["topic-init"]
    script = " ".join(init["command"])
    assert script.count("--if-not-exists") == 2
    assert "retention.ms=604800000" in script and "retention.ms=2592000000" in script
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_processes_wait_for_the_topics_and_publishers_scale() -> None:
    services = load_compose()["services"]
    for name, command in (("ingestor", ["ingest"]), ("publisher", ["publish"])):
        service = services[name]
        assert service["command"] == command
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    publisher = services["publisher"]
    # `--scale publisher=3` needs replicas that can coexist: no fixed name, no host port.
    assert "container_name" not in publisher
    assert "ports" not in publisher
    assert "deploy" not in services["ingestor"] or services["ingestor"]["deploy"].get("replicas", 1) == 1


def test_compose_emulator_commands_parse_and_listen_on_all_interfaces() -> None:
    from emulators.cloudtrail import _parser as cloudtrail_parser
    from emulators.falcon import build_parser as falcon_parser

    services = load_compose()["services"]
    falcon = [str(arg) for arg in services["falcon-emulator"]["command"]]
    assert falcon[:2] == ["emulate", "falcon"]
    args = falcon_parser().parse_args(falcon[2:])
    assert (args.host, args.port) == ("0.0.0.0", 8090)
    cloudtrail = [str(arg) for arg in services["cloudtrail-emulator"]["command"]]
    assert cloudtrail[:2] == ["emulate", "cloudtrail"]
    args = cloudtrail_parser().parse_args(cloudtrail[2:])
    assert (args.host, args.port, args.db) == ("0.0.0.0", 8091, "/data/lake.db")
    assert DEMO_CHANNEL in (args.channel or [])


def test_compose_without_env_file_is_the_demo_and_the_processes_accept_it(docker_compose: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    services = resolved_compose(docker_compose, empty, profile="demo")["services"]
    ingestor = {k: str(v) for k, v in services["ingestor"]["environment"].items()}
    publisher = {k: str(v) for k, v in services["publisher"]["environment"].items()}
    assert ingestor["FALCON_CLOUD_REGION"] == "http://falcon-emulator:8090"
    assert publisher["AWS_ENDPOINT_URL_CLOUDTRAIL_DATA"] == "http://cloudtrail-emulator:8091"
    assert publisher["AWS_ENDPOINT_URL_SSM"] == ingestor["AWS_ENDPOINT_URL_SSM"] == "http://moto:5000"
    assert publisher["CLOUDTRAIL_LAKE_CHANNEL_ARN"] == DEMO_CHANNEL
    assert publisher["AWS_ACCESS_KEY_ID"] and publisher["AWS_SECRET_ACCESS_KEY"]
    # The real settings loaders take the demo wiring as it is: no credential to supply.
    loaded_ingestor = load_ingestor(ingestor)
    assert loaded_ingestor.kafka.bootstrap_servers == "kafka:9092"
    assert loaded_ingestor.kafka.topic_partitions == 6
    assert loaded_ingestor.ops.metrics_port == 9464
    assert loaded_ingestor.ssm.region == "us-east-1"
    loaded_publisher = load_publisher(publisher)
    assert loaded_publisher.channel_arn == DEMO_CHANNEL
    assert loaded_publisher.ops.metrics_port == 9465


def test_compose_with_env_example_drops_the_demo_wiring(docker_compose: str) -> None:
    services = resolved_compose(docker_compose, ENV_EXAMPLE)["services"]
    publisher = {k: str(v) for k, v in services["publisher"]["environment"].items()}
    ingestor = {k: str(v) for k, v in services["ingestor"]["environment"].items()}
    for name in ("AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_CLOUDTRAIL_DATA"):
        assert publisher[name] == "", f"{name} must reach the real service once .env exists"
    assert ingestor["FALCON_CLOUD_REGION"] == "us-1"
    # Unfilled, it stops at start naming what is missing instead of talking to an emulator.
    with pytest.raises(SettingsError, match="CLOUDTRAIL_LAKE_CHANNEL_ARN"):
        load_publisher(publisher)
    with pytest.raises(SettingsError, match="FALCON_CLIENT_ID"):
        load_ingestor(ingestor)


def test_compose_passes_every_setting_to_both_processes() -> None:
    services = load_compose()["services"]
    expected = set(env_example()) - COMPOSE_NOT_APPLICABLE
    for name in ("ingestor", "publisher"):
        passed = set(services[name]["environment"])
        assert expected <= passed, f"{name} does not get {sorted(expected - passed)} from .env"
        assert passed <= set(env_example()), f"{name} sets {sorted(passed - set(env_example()))}"
        for pinned in COMPOSE_PINNED:
            assert "$" not in str(services[name]["environment"][pinned]), f"{name}: {pinned} is the compose broker's"


# ---- .env.example ----------------------------------------------------------------------------------


def test_env_example_lists_exactly_the_settings() -> None:
    listed = set(env_example())
    read = settings_variables()
    assert read <= listed, f".env.example misses {sorted(read - listed)}"
    known = read | readme_variables() | {name for name in listed if SDK_VARIABLES.match(name)}
    assert listed <= known, f".env.example lists variables nothing reads: {sorted(listed - known)}"


def test_env_example_comments_every_setting_and_leaves_secrets_empty() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert index > 0 and lines[index - 1].startswith("# "), f"no comment line above {line!r}"
    values = env_example()
    for name in SECRET_VARIABLES:
        assert values[name] == "", f"{name} must be empty in .env.example"


def test_env_example_values_are_the_defaults() -> None:
    """Loading .env.example (plus the required values) gives the same settings as an empty
    environment: every value it shows is the default, and every one is valid."""
    values = env_example()
    required = {
        "FALCON_CLIENT_ID": "id",
        "FALCON_CLIENT_SECRET": "secret",
        "CLOUDTRAIL_LAKE_CHANNEL_ARN": "arn:aws:cloudtrail:eu-west-1:123456789012:channel/abc",
    }
    assert load_ingestor({**values, **required}) == load_ingestor(required)
    assert load_publisher({**values, **required}) == load_publisher(required)


# ---- Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_health_check() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.count("FROM") >= 2, "builder and runtime stages"
    runtime = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users, "the runtime stage needs a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1].split(":")[0] == "10001"
    assert any(k == "HEALTHCHECK" and "CMD" in a for k, a in runtime)
    assert ("ENTRYPOINT", '["falcon-lake"]') in runtime
    exposed = " ".join(a for k, a in runtime if k == "EXPOSE").split()
    assert {"9464", "9465"} <= set(exposed)
    assert any(k == "RUN" and "pip install -c constraints.txt ." in a for k, a in instructions)


def test_dockerfile_copies_every_package() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    sources: set[str] = set()
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            sources.update(args.split()[:-1])
    for package in packages:
        assert package in sources, f"deploy/Dockerfile does not COPY the package {package}"
    for source in sources - {"README*"}:
        assert (ROOT / source).exists(), f"deploy/Dockerfile copies {source}, which does not exist"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".run", ".git", ".env", ".pytest_cache"} <= ignored


def _healthcheck_command() -> list[str]:
    for keyword, args in dockerfile_instructions():
        if keyword == "HEALTHCHECK":
            command: list[str] = json.loads(args[args.index("CMD") + len("CMD") :].strip())
            return command
    raise AssertionError("no HEALTHCHECK")


def test_dockerfile_health_check_asks_healthz() -> None:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    from prometheus_client import CollectorRegistry

    alive = {"value": True}
    server = OpsServer(CollectorRegistry(), lambda: (True, "ok"), alive=lambda: alive["value"], host="127.0.0.1")
    server.start()

    def check(port: str) -> int:
        env = {"PATH": os.environ.get("PATH", ""), "METRICS_PORT": port}
        return subprocess.run([sys.executable, "-c", command[2]], env=env, timeout=30).returncode

    try:
        assert check(str(server.port)) == 0
        alive["value"] = False  # /healthz answers 503
        assert check(str(server.port)) != 0
        assert check("0") == 0  # endpoint turned off: nothing to check
    finally:
        server.stop()
    assert check(str(free_port())) != 0  # nothing listening


# ---- CloudFormation --------------------------------------------------------------------------------


def test_cloudformation_templates_pass_cfn_lint() -> None:
    templates = [str(CFN_DIR / "falcon-lake.yaml"), str(CFN_DIR / "iam-policy.yaml")]
    executable = VENV_BIN / "cfn-lint"
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "cfnlint"]
    result = subprocess.run([*command, "--", *templates], capture_output=True, text=True, timeout=120)
    # 0 clean; 2 errors, 4 warnings, 8 informational (or-ed): warnings count as failures too.
    assert result.returncode == 0, result.stdout + result.stderr


def _task_environment(template: dict[str, Any], task: str) -> dict[str, Any]:
    container = template["Resources"][task]["Properties"]["ContainerDefinitions"][0]
    return {item["Name"]: item["Value"] for item in container["Environment"]}


def test_cloudformation_services_and_tasks() -> None:
    template = cfn_template("falcon-lake.yaml")
    resources = template["Resources"]
    ingestor = resources["IngestorService"]["Properties"]
    assert ingestor["DesiredCount"] == 1
    assert ingestor["DeploymentConfiguration"]["MaximumPercent"] == 100
    assert ingestor["DeploymentConfiguration"]["MinimumHealthyPercent"] == 0
    assert resources["PublisherService"]["Properties"]["DesiredCount"] == {"Ref": "PublisherDesiredCount"}
    assert resources["ServerlessCluster"]["Condition"] == "IsServerless"
    assert resources["ProvisionedCluster"]["Condition"] == "IsProvisioned"
    provisioned = resources["ProvisionedCluster"]["Properties"]
    assert provisioned["EncryptionInfo"]["EncryptionInTransit"]["ClientBroker"] == "TLS"
    assert provisioned["ClientAuthentication"]["Sasl"]["Iam"]["Enabled"] is True
    settings = settings_variables()
    for task, command, must in (
        ("IngestorTaskDefinition", ["ingest"], {"FALCON_SECRET_ARN", "KAFKA_BOOTSTRAP_SERVERS"}),
        ("PublisherTaskDefinition", ["publish"], {"CLOUDTRAIL_LAKE_CHANNEL_ARN", "KAFKA_BOOTSTRAP_SERVERS"}),
    ):
        container = resources[task]["Properties"]["ContainerDefinitions"][0]
        assert container["Command"] == command
        assert container["User"] == "10001"
        assert "/healthz" in " ".join(container["HealthCheck"]["Command"])
        env = _task_environment(template, task)
        assert env["KAFKA_SECURITY"] == "msk-iam"
        assert must <= set(env)
        assert set(env) <= settings, f"{task} sets variables nothing reads: {sorted(set(env) - settings)}"
        assert env["METRICS_PORT"] in " ".join(container["HealthCheck"]["Command"])
    outputs = set(template["Outputs"])
    assert {
        "IngestorLogGroupName",
        "PublisherLogGroupName",
        "PublisherPolicyArn",
        "KafkaClusterArn",
        "EcsClusterName",
        "IngestorServiceName",
        "PublisherServiceName",
    } <= outputs


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """Statements of a policy document, with Fn::If [cond, statement, NoValue] unwrapped."""
    found = []
    for statement in policy["PolicyDocument"]["Statement"]:
        if "Fn::If" in statement:
            statement = statement["Fn::If"][1]
        found.append(statement)
    return found


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


@pytest.mark.parametrize(
    ("template_name", "policy"),
    [
        ("falcon-lake.yaml", "PublisherPolicy"),
        ("falcon-lake.yaml", "IngestorPolicy"),
        ("iam-policy.yaml", "FalconLakePolicy"),
    ],
)
def test_cloudformation_policies_are_least_privilege(template_name: str, policy: str) -> None:
    template = cfn_template(template_name)
    resource = template["Resources"][policy]
    assert resource["Type"] == "AWS::IAM::ManagedPolicy"
    statements = _statements(resource["Properties"])
    by_action = {action: statement for statement in statements for action in _actions(statement)}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert "*" not in json.dumps(statement["Resource"]).replace("-*", ""), f"wildcard resource in {statement}"
        assert all(not action.endswith("*") for action in _actions(statement))
    if policy != "IngestorPolicy":
        assert by_action["cloudtrail-data:PutAuditEvents"]["Resource"] == {"Ref": "ChannelArn"}
        assert "ssm:PutParameter" in by_action
        assert "kafka-cluster:AlterGroup" in by_action
    if policy != "PublisherPolicy":
        assert by_action["secretsmanager:GetSecretValue"]["Resource"] == {"Ref": "FalconSecretArn"}
        assert "kafka-cluster:CreateTopic" in by_action
    assert "ssm:GetParameter" in by_action
    for action in ("kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"):
        assert action in by_action
    for action in ("kafka-cluster:ReadData", "kafka-cluster:WriteData", "kafka-cluster:DescribeTopic"):
        assert ":topic/" in json.dumps(by_action[action]["Resource"])
    assert "PolicyArn" in template["Outputs"] or "PublisherPolicyArn" in template["Outputs"]


class _ResponseCatcher(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def cloudformation_response_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local stand-in for CloudFormation's pre-signed response URL, collecting what is PUT."""
    received: list[dict[str, Any]] = []
    handler = type("Catcher", (_ResponseCatcher,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/response?X-Amz-Signature=x", received
    finally:
        server.shutdown()
        server.server_close()


class _FakeKafka:
    def __init__(self, answer: dict[str, str] | Exception) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def client(self, service: str) -> _FakeKafka:
        assert service == "kafka"
        return self

    def get_bootstrap_brokers(self, ClusterArn: str) -> dict[str, str]:
        self.asked.append(ClusterArn)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_cloudformation_bootstrap_function_answers_cloudformation(
    cloudformation_response_url: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = cloudformation_response_url
    function = cfn_template("falcon-lake.yaml")["Resources"]["BootstrapBrokersFunction"]["Properties"]
    code = str(function["Code"]["ZipFile"])
    arn = "arn:aws:kafka:us-east-1:123456789012:cluster/falcon-lake-kafka/8f1f2c9e-1111-2222-3333-444455556666-s2"
    event = {
        "RequestType": "Create",
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/falcon-lake/guid",
        "RequestId": "request-1",
        "LogicalResourceId": "KafkaBootstrap",
        "ResourceProperties": {"ClusterArn": arn},
    }

    def run(event: dict[str, Any], kafka: _FakeKafka) -> dict[str, Any]:
        namespace: dict[str, Any] = {"__name__": "index"}
        exec(compile(code, "index.py", "exec"), namespace)
        namespace["boto3"] = kafka
        namespace["handler"](event, None)
        return received[-1]

    brokers = "boot-abc.c2.kafka-serverless.us-east-1.amazonaws.com:9098"
    kafka = _FakeKafka({"BootstrapBrokerStringSaslIam": brokers})
    answer = run(event, kafka)
    assert kafka.asked == [arn]
    assert answer["Status"] == "SUCCESS"
    assert answer["Data"] == {"BootstrapServers": brokers}
    assert (answer["RequestId"], answer["LogicalResourceId"], answer["PhysicalResourceId"]) == (
        "request-1",
        "KafkaBootstrap",
        arn,
    )

    answer = run(event, _FakeKafka({"BootstrapBrokerStringTls": "b-1:9094"}))
    assert answer["Status"] == "FAILED" and "IAM" in answer["Reason"]

    answer = run(event, _FakeKafka(RuntimeError("AccessDenied")))
    assert answer["Status"] == "FAILED" and "AccessDenied" in answer["Reason"]

    deleting = {**event, "RequestType": "Delete", "PhysicalResourceId": arn}
    kafka = _FakeKafka(RuntimeError("must not be called on delete"))
    answer = run(deleting, kafka)
    assert answer["Status"] == "SUCCESS" and answer["PhysicalResourceId"] == arn and not kafka.asked


# ---- Kubernetes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_kubernetes_manifests_validate(version: str) -> None:
    import kubernetes_validate

    desired = kubernetes_validate.latest_version() if version == "latest" else version
    documents = k8s_documents()
    assert len(documents) >= 7
    for path, document in documents:
        try:
            kubernetes_validate.validate(document, desired, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {document['kind']} {document['metadata']['name']}: {exc.message}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    files = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_kubernetes_ingestor_is_a_single_recreated_pod() -> None:
    deployment = k8s_resource("Deployment", "falcon-lake-ingestor")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert _container(deployment)["args"] == ["ingest"]


@pytest.mark.parametrize(("name", "port", "command"), [("ingestor", 9464, "ingest"), ("publisher", 9465, "publish")])
def test_kubernetes_probes_and_security(name: str, port: int, command: str) -> None:
    deployment = k8s_resource("Deployment", f"falcon-lake-{name}")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["args"] == [command]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    assert env["METRICS_PORT"] == str(port)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", port)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= set(container["resources"])
    assert pod["serviceAccountName"] == "falcon-lake"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)


def test_kubernetes_settings_are_real_settings_and_irsa_is_annotated() -> None:
    config = k8s_resource("ConfigMap", "falcon-lake")["data"]
    known = settings_variables() | {name for name in config if SDK_VARIABLES.match(name)}
    assert set(config) <= known, f"ConfigMap sets variables nothing reads: {sorted(set(config) - known)}"
    assert config["KAFKA_SECURITY"] == "msk-iam"
    secret = k8s_resource("Secret", "falcon-lake-credentials")
    assert set(secret["stringData"]) == {"FALCON_CLIENT_ID", "FALCON_CLIENT_SECRET"}
    assert not any(secret["stringData"].values()), "no credential in the repository"
    account = k8s_resource("ServiceAccount", "falcon-lake")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    # Both processes accept the ConfigMap as it is (with the ingestor's credentials from the secret ARN).
    load_ingestor(config)
    load_publisher(config)


# ---- dashboards and alerts -------------------------------------------------------------------------


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = exposition_names()
    queried: set[str] = set()
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = queried_metrics(target["expr"])
            assert names, f"panel {panel['title']!r} queries no falcon-lake metric: {target['expr']}"
            assert names <= known, f"panel {panel['title']!r} queries unknown {sorted(names - known)}"
            queried |= names
    for wanted in (
        "falcon_lake_ingest_events_read_total",
        "falcon_lake_ingest_reconnects_total",
        "falcon_lake_ingest_event_age_seconds",
        "falcon_lake_publish_accepted_total",
        "falcon_lake_publish_filtered_total",
        "falcon_lake_publish_dead_lettered_total",
        "falcon_lake_publish_put_seconds_bucket",
        "falcon_lake_publish_requests_total",
        "falcon_lake_publish_in_flight_requests",
        "falcon_lake_publish_unfinished_records",
        "falcon_lake_publish_committed_offset",
        "falcon_lake_publish_ssm_writes_total",
        "falcon_lake_publish_channel_up",
    ):
        assert wanted in queried, f"the dashboard shows nothing of {wanted}"


def test_prometheus_alerts_use_only_exported_metrics() -> None:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    known = exposition_names()
    queried: set[str] = set()
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s"))), rule["alert"]
        used = queried_metrics(rule["expr"])
        assert used, f"{rule['alert']} queries no falcon-lake metric"
        assert used <= known, f"{rule['alert']} queries unknown {sorted(used - known)}"
        queried |= used
    for wanted in (
        "falcon_lake_publish_channel_up",  # channel down
        "falcon_lake_ingest_events_read_total",  # no events read
        "falcon_lake_publish_dead_lettered_total",  # DLQ growth
        "falcon_lake_publish_unfinished_records",  # delivery falling behind
        "falcon_lake_publish_committed_offset",  # lag: nothing committed
        "falcon_lake_publish_event_age_seconds_bucket",  # event age p99
        "falcon_lake_ingest_reconnects_total",  # reconnect storm
    ):
        assert wanted in queried, f"no alert watches {wanted}"


@pytest.mark.parametrize(
    ("template_name", "policy", "condition"),
    [
        ("falcon-lake.yaml", "AuditPolicy", "HasAuditEventDataStore"),
        ("iam-policy.yaml", "FalconLakeAuditPolicy", "HasEventDataStore"),
    ],
)
def test_the_optional_audit_policy_only_reads_and_the_writers_cannot_query(
    template_name: str, policy: str, condition: str
) -> None:
    template = cfn_template(template_name)
    resource = template["Resources"][policy]
    assert resource["Condition"] == condition, "created only when an event data store is given"
    statements = _statements(resource["Properties"])
    actions = {action for statement in statements for action in _actions(statement)}
    query = {"cloudtrail:GetEventDataStore", "cloudtrail:StartQuery", "cloudtrail:DescribeQuery"}
    assert query | {"cloudtrail:GetQueryResults"} <= actions
    for statement in statements:
        if any(action.startswith("cloudtrail:") for action in _actions(statement)):
            assert statement["Resource"] == {
                "Ref": "AuditEventDataStoreArn" if condition.startswith("HasAudit") else "EventDataStoreArn"
            }
    writes = {
        "cloudtrail-data:PutAuditEvents",
        "ssm:PutParameter",
        "kafka-cluster:WriteData",
        "kafka-cluster:AlterGroup",
    }
    assert not actions & writes, "the audit writes nothing"
    assert all(not a.endswith("*") for a in actions)
    for writer in ("PublisherPolicy", "IngestorPolicy", "FalconLakePolicy"):
        if writer in template["Resources"]:
            granted = {a for s in _statements(template["Resources"][writer]["Properties"]) for a in _actions(s)}
            assert not any(a.startswith("cloudtrail:") for a in granted), f"{writer} stays write-only"
