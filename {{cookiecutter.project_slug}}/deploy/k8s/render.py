"""The Kubernetes manifests of a multi-node training run, printed for kubectl: a headless
Service and an Indexed Job, no operator needed.

    python3 deploy/k8s/render.py | kubectl apply -f -     # `make k8s` prints the same
    python3 deploy/k8s/render.py --values other.env       # another set of values

The values are set in one place each: deploy/k8s/values.env (nodes, GPUs per node, job
name, checkpoint claim, rendezvous port and timeout, retries, and an image when not the
pushed one) and .env (user ids, shared memory: the values Docker Compose uses). The image
is the one `make push` pushes from this checkout, named by docker/push itself
(`sh docker/push --ref`: REGISTRY/{{ cookiecutter.project_slug }}:COMMIT, REGISTRY from .env).
Everything that must agree is derived here, never typed twice:

- the world size: the Job's completions and parallelism, and torchrun's NNODES;
- the node rank: each pod's completion index (NODE_RANK, from the annotation the Job
  controller also fills JOB_COMPLETION_INDEX from);
- the rendezvous address: the first pod's DNS name, JOB_NAME-0.JOB_NAME (an Indexed
  Job's pods are named JOB_NAME-INDEX, and the Service, named after the Job, is their
  subdomain), with no namespace: it resolves in whichever namespace the Job runs;
- the GPUs: each pod's nvidia.com/gpu limit and torchrun's NPROC_PER_NODE.

Each pod runs docker/train (torchrun; for TensorFlow, train.py with a TF_CONFIG that
docker/train writes from WORKERS, every pod by name) in the image. Standard library only, like docker/setup_env.py, whose reading
of .env this script shares.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in docker/
PROJECT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(PROJECT / "docker"))

import setup_env  # found through the path set just above

VALUES = Path(__file__).resolve().parent / "values.env"
FRAMEWORK = "{{ cookiecutter.framework }}"
# Where the image holds the project, and where checkpoints go (the claim is mounted there).
WORKDIR = "/workspace"
CHECKPOINTS = f"{WORKDIR}/checkpoints"
LAUNCHER = f"{WORKDIR}/docker/train"
# The annotation an Indexed Job's controller sets on each pod to its completion index.
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# A label of the Job's pods, which the Service selects.
POD_LABEL = "app.kubernetes.io/instance"
# A Service name (RFC 1035 label), and a claim name (RFC 1123 subdomain).
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
# An image reference: [host[:port]/]path[:tag][@digest], no spaces or quotes.
IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]*(@sha256:[0-9a-f]{64})?\Z")
# A size as Docker reads SHM_SIZE: a number, then b, k, m, g, t or p (powers of 1024).
DOCKER_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([kmgtp]?)i?b?\Z", re.IGNORECASE)
BINARY_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi")


class ValuesError(Exception):
    """A value that would not make a working Job: the message names it and the fix."""


@dataclass(frozen=True)
class Settings:
    image: str
    nodes: int
    gpus_per_node: int
    job_name: str
    claim: str
    rdzv_port: int
    rdzv_timeout: int
    max_restarts: int
    backoff_limit: int
    uid: int
    gid: int
    shm_size: str


def count(values: dict[str, str], key: str, least: int, most: int | None = None) -> int:
    value = values.get(key, "")
    if not re.fullmatch(r"[0-9]+", value) or int(value) < least or (most is not None and int(value) > most):
        bound = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise ValuesError(f"{key}={value!r} in deploy/k8s/values.env is not a whole number {bound}")
    return int(value)


def quantity(size: str) -> str:
    """SHM_SIZE as Docker reads it (8gb, 512m, 1.5g: powers of 1024) as a Kubernetes
    quantity: 8Gi, 512Mi, 1536Mi."""
    found = DOCKER_SIZE.fullmatch(size.strip())
    if not found:
        raise ValuesError(f"SHM_SIZE={size!r} in .env is not a size like 8gb or 512mb")
    power = "bkmgtp".index(found.group(2).lower() or "b")
    number = int(float(found.group(1)) * 1024**power)
    if number <= 0:
        raise ValuesError(f"SHM_SIZE={size!r} in .env is empty: /dev/shm needs room (8gb is the default)")
    power = next(power for power in range(len(BINARY_SUFFIXES) - 1, -1, -1) if number % 1024**power == 0)
    return f"{number // 1024**power}{BINARY_SUFFIXES[power]}"


def pushed_image() -> str:
    """The reference `make push` gives this checkout's image, from docker/push itself (the
    one computation of it): REGISTRY/{{ cookiecutter.project_slug }}:COMMIT-uUID-gGID-BASE, REGISTRY from
    .env; -dirty, a name no push gives, with uncommitted changes to what the image holds."""
    result = setup_env.run(["sh", str(PROJECT / "docker" / "push"), "--ref"])
    if result is None or result.returncode != 0:
        reason = result.stderr.strip() if result is not None else "sh docker/push --ref did not run"
        raise ValuesError(f"IMAGE is empty in deploy/k8s/values.env, and the image `make push` names failed:\n{reason}")
    image = result.stdout.strip()
    if image.endswith("-dirty"):
        print(
            f"deploy/k8s/render.py: note: {image} names this tree's uncommitted changes, which no push "
            "gives: commit them and `make push`, then render again",
            file=sys.stderr,
        )
    return image


def settings(env: dict[str, str], values: dict[str, str]) -> Settings:
    """The run's settings from .env and values.env; ValuesError for one that Kubernetes,
    the image or torchrun would refuse later, and less clearly."""
    nodes = count(values, "NODES", 1)
    job_name = values.get("JOB_NAME", "")
    # Pod host names are JOB_NAME-INDEX, one DNS label: 63 characters at most.
    longest = f"{job_name}-{nodes - 1}"
    if not DNS_LABEL.match(job_name) or len(longest) > 63:
        raise ValuesError(
            f"JOB_NAME={job_name!r} in deploy/k8s/values.env cannot name the Job, its Service and its pods "
            f"({longest!r}): lowercase letters, digits and '-', starting with a letter, and short enough "
            "that the last pod's name is at most 63 characters"
        )
    claim = values.get("CHECKPOINT_CLAIM", "")
    if not DNS_SUBDOMAIN.match(claim) or len(claim) > 253:
        raise ValuesError(
            f"CHECKPOINT_CLAIM={claim!r} in deploy/k8s/values.env is not a claim name "
            "(lowercase letters, digits, '-' and '.')"
        )
    ids = {}
    for key in ("USER_UID", "USER_GID"):
        problem = setup_env.id_problem(env.get(key, ""))
        if problem:
            raise ValuesError(f"{key}={env.get(key, '')!r} in .env {problem}")
        ids[key] = int(env[key])
    counts = {
        "gpus_per_node": count(values, "GPUS_PER_NODE", 1),
        "rdzv_port": count(values, "RDZV_PORT", 1, 65535),
        "rdzv_timeout": count(values, "RDZV_TIMEOUT", 1),
        "max_restarts": count(values, "MAX_RESTARTS", 0),
        "backoff_limit": count(values, "BACKOFF_LIMIT", 0),
    }
    shm_size = quantity(env.get("SHM_SIZE", "") or "8gb")
    # Last: the pushed image's name asks git and docker/push.
    image = values.get("IMAGE", "") or pushed_image()
    if not IMAGE_RE.match(image):
        raise ValuesError(f"IMAGE={image!r} is not an image reference like registry.example.com/team/name:tag")
    return Settings(
        image=image,
        nodes=nodes,
        job_name=job_name,
        claim=claim,
        uid=ids["USER_UID"],
        gid=ids["USER_GID"],
        shm_size=shm_size,
        **counts,
    )


def manifests(run: Settings) -> list[dict]:
    """The headless Service, then the Indexed Job."""
    service_name = run.job_name  # the pods' subdomain
    # The first pod's name in the Service's subdomain, as seen from its own namespace.
    rdzv_endpoint = f"{run.job_name}-0.{service_name}:{run.rdzv_port}"
    labels = {POD_LABEL: run.job_name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": labels,
            # The DNS names exist as soon as a pod has its address, before it is ready:
            # the nodes look the first one up while it starts.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rdzv", "port": run.rdzv_port, "targetPort": run.rdzv_port, "protocol": "TCP"}],
        },
    }
    env = {"NNODES": str(run.nodes)}
    if FRAMEWORK == "pytorch":
        env.update(
            NPROC_PER_NODE=str(run.gpus_per_node),
            RDZV_ENDPOINT=rdzv_endpoint,
            RDZV_ID=run.job_name,
            MAX_RESTARTS=str(run.max_restarts),
        )
    elif run.nodes > 1:
        # MultiWorkerMirroredStrategy's cluster, every pod by name in index order; docker/train
        # writes TF_CONFIG from it and NODE_RANK.
        env["WORKERS"] = ",".join(
            f"{run.job_name}-{index}.{service_name}:{run.rdzv_port}" for index in range(run.nodes)
        )
    env["RDZV_TIMEOUT"] = str(run.rdzv_timeout)
    container = {
        "name": "train",
        "image": run.image,
        "workingDir": WORKDIR,
        "command": ["sh", LAUNCHER],
        "env": [
            # First: the variables after it may name it.
            {
                "name": "NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}},
            },
            *({"name": key, "value": value} for key, value in env.items()),
        ],
        "ports": [{"name": "rdzv", "containerPort": run.rdzv_port, "protocol": "TCP"}],
        "resources": {"limits": {"nvidia.com/gpu": run.gpus_per_node}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "checkpoints", "mountPath": CHECKPOINTS},
        ],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": run.job_name, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": run.nodes,
            "parallelism": run.nodes,
            "backoffLimit": run.backoff_limit,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": service_name,
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsUser": run.uid,
                        "runAsGroup": run.gid,
                        "runAsNonRoot": True,
                        # The claim's files belong to the user's group.
                        "fsGroup": run.gid,
                        "fsGroupChangePolicy": "OnRootMismatch",
                    },
                    "containers": [container],
                    "volumes": [
                        # DataLoader workers and NCCL exchange tensors through /dev/shm
                        # (a container's default is 64 MB); it counts as the pod's memory.
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": run.shm_size}},
                        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": run.claim}},
                    ],
                },
            },
        },
    }
    return [service, job]


# ---------------------------------------------------------------------------------------
# YAML out (the standard library has no YAML writer): block style, every string quoted
# unless it is plain text that YAML cannot misread, and only ASCII written (escapes).
# ---------------------------------------------------------------------------------------

PLAIN = re.compile(r"[A-Za-z/][A-Za-z0-9_./-]*\Z")
# Words YAML 1.1 readers take for booleans or null.
SPECIAL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def scalar(value: object) -> str:
    """A scalar, or an empty dict or list, in flow style."""
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and PLAIN.match(value) and value.lower() not in SPECIAL:
        return value
    return quoted(str(value))


def quoted(text: str) -> str:
    """text as a double-quoted YAML string in ASCII: \\, \\" and \\x, \\u or \\U escapes."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code <= 0x7E:
            out.append(char)
        else:
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def yaml_lines(value: object, indent: str = "") -> list[str]:
    """value (dicts, lists, strings, numbers and booleans) as YAML lines, indented.
    Keys: at most 1024 characters as written, YAML's limit for keys written this way."""
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if len(scalar(key)) > 1024:
                raise ValueError(f"a key too long for YAML: {key[:40]!r}...")
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{indent}{scalar(key)}:")
                lines += yaml_lines(item, indent + "  ")
            else:
                lines.append(f"{indent}{scalar(key)}: {scalar(item)}")
    else:
        for item in value:  # a list: a nested block starts on the dash's line
            if isinstance(item, (dict, list)) and item:
                nested = yaml_lines(item, indent + "  ")
                lines.append(f"{indent}- {nested[0][len(indent) + 2 :]}")
                lines += nested[1:]
            else:
                lines.append(f"{indent}- {scalar(item)}")
    return lines


def to_yaml(documents: list[dict]) -> str:
    return "".join("---\n" + "\n".join(yaml_lines(document)) + "\n" for document in documents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=Path, default=VALUES, help="the values file (default: deploy/k8s/values.env)")
    args = parser.parse_args(argv)
    try:
        if not setup_env.ENV.is_file():
            raise ValuesError("no .env in the project: `python3 docker/setup_env.py` (any `make` target) writes it")
        env = setup_env.parse_env(setup_env.read_text(setup_env.ENV))
        values = setup_env.parse_env(setup_env.read_text(args.values), name=args.values.name)
        documents = manifests(settings(env, values))
    except (ValuesError, setup_env.EnvError, OSError) as error:
        print(f"deploy/k8s/render.py: {error}", file=sys.stderr)
        return 1
    print(f"# From deploy/k8s/render.py ({args.values.name} and .env): edit those, not this.")
    print(to_yaml(documents), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
