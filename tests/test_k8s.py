"""deploy/k8s/ of a baked project: the manifests deploy/k8s/render.py prints are valid
Kubernetes for the oldest and the newest versions kubernetes-validate knows, and what must
agree between the Job, its headless Service and torchrun's settings is derived once."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TEMPLATE, run, tool
from cookiecutter.main import cookiecutter
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import all_versions

# Every Kubernetes version the installed kubernetes-validate ships schemas for.
VERSIONS = sorted(set(all_versions()), key=lambda version: tuple(int(part) for part in version.split(".")))
OLDEST_AND_NEWEST = sorted({VERSIONS[0], VERSIONS[-1]})
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
REGISTRY = "registry.example.com/team"
# The baked project belongs to its answered uid, not to this test's: git, as root here,
# would refuse it as a repository of dubious ownership.
GIT_ENV = {**os.environ, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
# Value sets: (values.env changes, nodes, GPUs per node, rendezvous port).
VALUE_SETS = {
    "1x1-defaults": ({}, 1, 1, 29400),
    "4x8": ({"NODES": "4", "GPUS_PER_NODE": "8"}, 4, 8, 29400),
    "16x4-own-name-and-port": (
        {"NODES": "16", "GPUS_PER_NODE": "4", "JOB_NAME": "bert-pretrain", "RDZV_PORT": "23456"},
        16,
        4,
        23456,
    ),
}


def env_of(project: Path) -> dict[str, str]:
    """.env as the project reads it (docker/setup_env.py's parse_env)."""
    return load_render(project).setup_env.parse_env((project / ".env").read_text())


def load_render(project: Path):
    """The baked project's deploy/k8s/render.py as a module."""
    spec = importlib.util.spec_from_file_location(f"render_{abs(hash(project))}", project / "deploy/k8s/render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclass
    spec.loader.exec_module(module)
    return module


def set_values(project: Path, **values: str) -> None:
    """Change lines of deploy/k8s/values.env, each of which must be there already."""
    path = project / "deploy/k8s/values.env"
    text = path.read_text()
    for key, value in values.items():
        text, found = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.MULTILINE)
        assert found == 1, f"{key} is not a line of values.env"
    path.write_text(text)


def render(project: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "deploy/k8s/render.py"], cwd=project, env=GIT_ENV)


def rendered(project: Path) -> list[dict]:
    result = render(project)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document is not None]


IMAGE = f"{REGISTRY}/gpu_lab:0123456789ab"


def ready(project: Path) -> Path:
    """A baked project with what `make push` needs (REGISTRY) and an image set."""
    with (project / ".env").open("a") as env:
        env.write(f"REGISTRY={REGISTRY}\n")
    set_values(project, IMAGE=IMAGE)
    return project


@pytest.fixture
def project(bake) -> Path:
    baked = bake(uid=4321, gid=4322)
    assert baked.exit_code == 0, baked.output
    return ready(baked.project_path)


@pytest.fixture(scope="module")
def project_once(tmp_path_factory, _cookiecutter_config_file) -> Path:
    """One project for the tests that only read it (a bake takes seconds)."""
    output = str(tmp_path_factory.mktemp("once"))
    config = str(_cookiecutter_config_file)
    return ready(Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=output, config_file=config)))


@pytest.fixture
def project_copy(project_once, tmp_path) -> Path:
    """A copy of project_once for a test that changes its values."""
    return Path(shutil.copytree(project_once, tmp_path / project_once.name, symlinks=True))


@pytest.fixture(scope="module")
def render_module(project_once):
    return load_render(project_once)


def parts(documents: list[dict]):
    [service] = [document for document in documents if document["kind"] == "Service"]
    [job] = [document for document in documents if document["kind"] == "Job"]
    pod = job["spec"]["template"]
    [container] = pod["spec"]["containers"]
    env = {variable["name"]: variable for variable in container["env"]}
    return service, job, pod, container, env


def assert_consistent(documents: list[dict], nodes: int, gpus: int, port: int) -> None:
    """The world size, rank source, rendezvous endpoint and GPU count agree across the
    Job, the Service and the container, and with the values asked for."""
    service, job, pod, container, env = parts(documents)
    spec = job["spec"]
    # World size: one pod per node, all at once, and torchrun told so.
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    assert env["NNODES"]["value"] == str(spec["completions"])
    # Rank: each pod's completion index (what JOB_COMPLETION_INDEX is set from).
    assert env["NODE_RANK"] == {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": INDEX_FIELD}}}
    # The headless Service selects the Job's pods, and is their subdomain.
    assert service["spec"]["clusterIP"] == "None"
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    # Rendezvous: index 0's DNS name (hostname JOB-0 in subdomain SERVICE), without a
    # namespace, and the port the Service and the container declare. TensorFlow's
    # workers: every pod's name in index order (WORKERS, for docker/train's TF_CONFIG).
    if "WORKERS" in env:
        workers = env["WORKERS"]["value"].split(",")
        assert workers == [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{port}" for i in range(nodes)]
        first = workers[0]
    elif "RDZV_ENDPOINT" in env:
        first = env["RDZV_ENDPOINT"]["value"]
        assert env["RDZV_ID"]["value"]
    else:
        assert nodes == 1, "several TensorFlow nodes without WORKERS"
        first = f"{job['metadata']['name']}-0.{service['metadata']['name']}:{port}"
    host, _, endpoint_port = first.rpartition(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert all(DNS_LABEL.match(label) and len(label) <= 63 for label in host.split("."))
    assert len(f"{job['metadata']['name']}-{nodes - 1}") <= 63  # the last pod's hostname
    assert "namespace" not in job["metadata"] and "namespace" not in service["metadata"]
    assert int(endpoint_port) == port
    assert [entry["port"] for entry in service["spec"]["ports"]] == [port]
    assert [entry["containerPort"] for entry in container["ports"]] == [port]
    assert int(env["RDZV_TIMEOUT"]["value"]) > 0
    # GPUs: the pod's limit is torchrun's processes per node (TensorFlow uses every GPU
    # the pod has).
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == gpus
    if "RDZV_ENDPOINT" in env:
        assert env["NPROC_PER_NODE"]["value"] == str(gpus)
    # The project's launcher, which reads exactly these variables.
    assert container["command"][-1].endswith("docker/train")
    assert container.get("args") is None


@pytest.mark.parametrize("version", OLDEST_AND_NEWEST)
@pytest.mark.parametrize("value_set", ["1x1-defaults", "4x8"])
def test_manifests_pass_strict_validation(project, tmp_path, version, value_set):
    set_values(project, **VALUE_SETS[value_set][0])
    result = render(project)
    assert result.returncode == 0, result.stderr
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(result.stdout)
    checked = run([tool("kubernetes-validate"), "--strict", "-k", version, str(manifests)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for resource in ("service", "job"):
        assert re.search(rf"passed for resource {resource}/\S+ against version", checked.stdout + checked.stderr)


@pytest.mark.parametrize("version", OLDEST_AND_NEWEST)
def test_strict_validation_refuses_what_kubernetes_would(project, tmp_path, version):
    """The validation above can fail: a field Kubernetes does not know, or a wrong type."""
    for spoil in (
        lambda job: job["spec"].update(bogus=1),
        lambda job: job["spec"]["template"]["spec"]["containers"][0].update(env="NNODES=1"),
    ):
        documents = rendered(project)
        spoil(parts(documents)[1])
        manifests = tmp_path / "manifests.yaml"
        manifests.write_text(yaml.safe_dump_all(documents))
        checked = run([tool("kubernetes-validate"), "--strict", "-k", version, str(manifests)])
        assert checked.returncode != 0, checked.stdout


def test_versions_are_read_from_the_package():
    assert len(VERSIONS) >= 2 and VERSIONS[0] != VERSIONS[-1]
    # Indexed Jobs are GA from 1.24: an older schema here would refuse completionMode.
    assert tuple(int(part) for part in VERSIONS[0].split(".")[:2]) >= (1, 24)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_job_service_and_torchrun_agree(project, value_set):
    changes, nodes, gpus, port = VALUE_SETS[value_set]
    set_values(project, **changes)
    documents = rendered(project)
    assert_consistent(documents, nodes, gpus, port)
    service, job, _, _, _ = parts(documents)
    if "JOB_NAME" in changes:
        assert job["metadata"]["name"] == service["metadata"]["name"] == changes["JOB_NAME"]


SPOILERS = {
    "completions": lambda s, j, p, c, e: j["spec"].update(completions=j["spec"]["completions"] + 1),
    "parallelism": lambda s, j, p, c, e: j["spec"].update(parallelism=1 + j["spec"]["parallelism"]),
    "nnodes": lambda s, j, p, c, e: e["NNODES"].update(value="3"),
    "rank": lambda s, j, p, c, e: e["NODE_RANK"].update(value="0"),
    "subdomain": lambda s, j, p, c, e: p["spec"].update(subdomain="other"),
    "selector": lambda s, j, p, c, e: s["spec"].update(selector={"job-name": "other"}),
    "endpoint-index": lambda s, j, p, c, e: e["RDZV_ENDPOINT"].update(
        value=e["RDZV_ENDPOINT"]["value"].replace("-0.", "-1.")
    ),
    "endpoint-namespace": lambda s, j, p, c, e: e["RDZV_ENDPOINT"].update(
        value=e["RDZV_ENDPOINT"]["value"].replace(":", ".default.svc.cluster.local:")
    ),
    "endpoint-port": lambda s, j, p, c, e: e["RDZV_ENDPOINT"].update(value=e["RDZV_ENDPOINT"]["value"] + "1"),
    "service-port": lambda s, j, p, c, e: s["spec"]["ports"][0].update(port=1234),
    "gpus": lambda s, j, p, c, e: c["resources"]["limits"].update({"nvidia.com/gpu": 2}),
    "nproc": lambda s, j, p, c, e: e["NPROC_PER_NODE"].update(value="2"),
    "headless": lambda s, j, p, c, e: s["spec"].update(clusterIP="10.96.0.10"),
}


@pytest.mark.parametrize("spoiler", SPOILERS)
def test_the_agreement_check_catches_each_mismatch(project_once, spoiler):
    documents = rendered(project_once)
    assert_consistent(documents, 1, 1, 29400)
    SPOILERS[spoiler](*parts(documents))
    with pytest.raises(AssertionError):
        assert_consistent(documents, 1, 1, 29400)


def test_pods_take_the_env_values(project):
    """User ids, shared memory and image from .env, the claim from values.env."""
    env_path = project / ".env"
    env_path.write_text(env_path.read_text() + "SHM_SIZE=1.5g\n")
    set_values(project, CHECKPOINT_CLAIM="team-checkpoints", BACKOFF_LIMIT="0")
    _, job, pod, container, _ = parts(rendered(project))
    security = pod["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (4321, 4322, 4322)
    assert security["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1536Mi"}
    assert volumes[mounts["/workspace/checkpoints"]]["persistentVolumeClaim"] == {"claimName": "team-checkpoints"}
    assert container["image"] == IMAGE
    assert container["workingDir"] == "/workspace"


@pytest.mark.parametrize(
    ("size", "quantity"),
    [("8gb", "8Gi"), ("8GB", "8Gi"), ("512m", "512Mi"), ("512mb", "512Mi"), ("1.5g", "1536Mi"), ("1g", "1Gi"),
     ("64k", "64Ki"), ("1000", "1000"), ("2048", "2Ki"), ("1t", "1Ti"), ("2 gb", "2Gi"), ("3gib", "3Gi")],
)  # fmt: skip
def test_shm_size_is_read_as_docker_reads_it(render_module, size, quantity):
    assert render_module.quantity(size) == quantity


def test_the_image_is_the_one_make_push_pushes(project):
    """IMAGE empty: docker/push's own reference, REGISTRY/SLUG:COMMIT."""
    set_values(project, IMAGE="")
    result = render(project)
    assert result.returncode == 1 and result.stdout == ""
    assert "not in a git repository" in result.stderr  # docker/push's refusal, passed on
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "first"]):
        assert run([*git, *cmd], cwd=project, env=GIT_ENV).returncode == 0
    head = run(["git", "rev-parse", "HEAD"], cwd=project, env=GIT_ENV).stdout.strip()
    pushed = run(["sh", "docker/push", "--ref"], cwd=project, env=GIT_ENV).stdout.strip()
    assert re.fullmatch(rf"{re.escape(REGISTRY)}/{project.name}:{head[:12]}-u\d+-g\d+-[0-9a-f]{{8}}", pushed)
    assert parts(rendered(project))[3]["image"] == pushed
    (project / "README.md").write_text("changed\n")  # not in the image: the same tag
    assert parts(rendered(project))[3]["image"] == pushed
    (project / "src" / project.name / "__init__.py").write_text("changed = True\n")
    result = render(project)
    assert parts(list(yaml.safe_load_all(result.stdout)))[3]["image"] == f"{pushed}-dirty"
    assert "uncommitted changes" in result.stderr
    # REGISTRY as docker/push checks it.
    (project / ".env").write_text((project / ".env").read_text() + "REGISTRY=\n")
    result = render(project)
    assert result.returncode == 1 and "set REGISTRY in .env" in result.stderr


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("values", "NODES", "0", "NODES='0' in deploy/k8s/values.env is not a whole number of at least 1"),
        ("values", "GPUS_PER_NODE", "two", "GPUS_PER_NODE='two'"),
        ("values", "RDZV_PORT", "70000", "from 1 to 65535"),
        ("values", "JOB_NAME", "Train_Job", "cannot name the Job"),
        ("values", "JOB_NAME", "9lives", "cannot name the Job"),
        ("values", "JOB_NAME", "a" * 62, "at most 63 characters"),
        ("values", "CHECKPOINT_CLAIM", "My Claim", "is not a claim name"),
        ("values", "IMAGE", "registry.example.com/a b", "is not an image reference"),
        ("values", "MAX_RESTARTS", "-1", "MAX_RESTARTS='-1'"),
        ("env", "USER_UID", "0", "USER_UID='0' in .env is root's id"),
        ("env", "SHM_SIZE", "lots", "SHM_SIZE='lots' in .env is not a size"),
    ],
)
def test_values_that_would_not_run_are_refused(project_copy, where, key, value, message):
    if where == "values":
        set_values(project_copy, **{key: value})
    else:
        env = project_copy / ".env"
        env.write_text(env.read_text() + f"{key}={value}\n")
    result = render(project_copy)
    assert result.returncode == 1 and result.stdout == ""
    assert message in result.stderr and result.stderr.startswith("deploy/k8s/render.py: ")


def test_a_missing_env_is_refused_with_the_fix(project):
    (project / ".env").unlink()
    result = render(project)
    assert result.returncode == 1 and "docker/setup_env.py" in result.stderr


def test_make_k8s_prints_the_manifests(project):
    result = run(["make", "-s", "k8s"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert [document["kind"] for document in yaml.safe_load_all(result.stdout) if document] == ["Service", "Job"]


def test_the_default_names_fit_the_longest_slug(bake):
    baked = bake(project_name="x", project_slug="a" + "_b" * 29 + "c")  # 60 characters, the longest
    assert baked.exit_code == 0, baked.output
    project = ready(baked.project_path)
    set_values(project, NODES="1000")
    documents = rendered(project)
    assert_consistent(documents, 1000, 1, 29400)
    assert len(parts(documents)[1]["metadata"]["name"]) + len("-999") <= 63


def tf_config_from_launcher(project: Path, env: dict, rank: int) -> dict:
    """The TF_CONFIG docker/train gives train.py in pod `rank`, from the manifest's
    variables: its interpreter replaced by one that prints the variable."""
    printer = project / "print-tf-config"
    printer.write_text('#!/bin/sh\nprintf "%s" "$TF_CONFIG"\n')
    printer.chmod(0o755)
    variables = {name: entry["value"] for name, entry in env.items() if "value" in entry}
    launched = run(
        ["sh", "docker/train"], cwd=project,
        env={**os.environ, **variables, "NODE_RANK": str(rank), "PYTHON": str(printer)},
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    return json.loads(launched.stdout)


def test_tensorflow_workers_get_a_tf_config_listing_every_pod(bake):
    baked = bake(framework="tensorflow", cuda_version="12.5")
    assert baked.exit_code == 0, baked.output
    project = ready(baked.project_path)
    assert "WORKERS" not in parts(rendered(project))[4]  # one node: no cluster to describe
    set_values(project, NODES="3", GPUS_PER_NODE="2")
    documents = rendered(project)
    assert_consistent(documents, 3, 2, 29400)
    service, job, _, _, env = parts(documents)
    name, subdomain = job["metadata"]["name"], service["metadata"]["name"]
    # Pod 0 only: the others first wait for it (docker/train's rendezvous check).
    assert tf_config_from_launcher(project, env, 0) == {
        "cluster": {"worker": [f"{name}-{index}.{subdomain}:29400" for index in range(3)]},
        "task": {"type": "worker", "index": 0},
    }


def test_pytorch_workers_get_no_tf_config(project):
    set_values(project, NODES="2")
    env = parts(rendered(project))[4]
    assert "TF_CONFIG" not in env and "WORKERS" not in env


# Keys: 1024 characters at most as written (YAML's limit), 10 for each escaped one.
KEYS = st.text(max_size=100)
YAML_VALUES = st.recursive(
    st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(document=st.dictionaries(KEYS, YAML_VALUES, min_size=1, max_size=6))
def test_the_yaml_writer_round_trips(document, render_module):
    text = render_module.to_yaml([document])
    assert text.isascii()
    assert list(yaml.safe_load_all(text)) == [document]
