"""The image builds and serves, here, and the compose file is valid with the command its comment gives.

buildah builds the Dockerfile from a Debian 12 base made from Debian's packages (no registry is reachable), without
the GPU extras; podman runs it with MODEL_DIR on a host folder and the port on 127.0.0.1, and Label Studio's calls
get the answers the code gives in process. How and why: tools/container.py. Skipped, with the reason, where the
tools are missing or cannot run (`make system-packages` installs them as root). The first build takes minutes
(base image, Python, the requirements); later ones rebuild only the layers whose inputs changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import LABEL_CONFIG, SAMPLES, annotation_event, predict_body, repo_root, wait_until
from tests.test_layout import PARTS
from tools import container
from tools.local_label_studio import free_port

UNAVAILABLE = container.unavailable_reason()
AUTH = ("labelstudio", "container-test-secret")
# Label Studio's ML-backend template passes the Basic auth pair under these names.
AUTH_ENV = {"ML_SERVER_BASIC_AUTH_USER": AUTH[0], "ML_SERVER_BASIC_AUTH_PASS": AUTH[1]}


class Served:
    """One `podman run` of the image, on a free port of 127.0.0.1."""

    def __init__(self):
        self.name = f"dept-router-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, tag: str, model_dir: Path, env: dict[str, str]) -> Served:
        command = container.run_command(tag, name=self.name, model_dir=model_dir, port=self.port, env=env, detach=True)
        started = subprocess.run(command, capture_output=True, text=True)
        assert started.returncode == 0, f"podman run failed: {started.stderr}"
        try:
            wait_until(self.healthy, timeout=120, interval=0.5, what="/health of the container")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{self.logs()}") from None
        return self

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:  # the published port accepts before gunicorn listens: it may hang up or stall
            return False

    def post(self, path: str, body: dict, auth=AUTH) -> requests.Response:
        return requests.post(f"{self.url}{path}", data=json.dumps(body, ensure_ascii=False).encode(),
                             headers={"Content-Type": "application/json"}, auth=auth, timeout=120)

    def logs(self) -> str:
        return subprocess.run(["podman", "logs", self.name], capture_output=True, text=True).stdout[-4000:]

    def stop(self) -> None:
        """A graceful stop, as `docker compose down` does it: SIGTERM, then the container is gone."""
        subprocess.run(["podman", "stop", "--time", "20", self.name], check=True, capture_output=True)
        self.remove()

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "--force", self.name], capture_output=True)


@pytest.fixture(scope="module")
def image() -> str:
    if UNAVAILABLE:
        pytest.skip(f"the container test cannot run here: {UNAVAILABLE}")
    # One tag per worktree: test runs of several checkouts share this machine's container storage.
    tag = f"localhost/dept-router:test-{hashlib.sha1(str(repo_root()).encode()).hexdigest()[:8]}"
    return container.build(tag, base=container.ensure_base_image())


@pytest.fixture
def model_dir(tmp_path, image) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    os.chown(folder, *container.image_user(image))
    return folder


@pytest.fixture
def serve(image, model_dir):
    started: list[Served] = []

    def start() -> Served:
        started.append(Served())  # before it starts, so that whatever it leaves running is removed
        return started[-1].start(image, model_dir, AUTH_ENV)

    yield start
    for served in started:
        served.remove()


def test_the_image_holds_python_3_11_the_product_packages_and_nothing_else(image):
    probe = "import json, os, sys; print(json.dumps({'python': sys.version_info[:2], 'uid': os.getuid(), 'app': sorted(os.listdir('/app'))}))"
    found = json.loads(container.run_in_image(image, "python", "-c", probe))
    assert tuple(found["python"]) == sys.version_info[:2] == (3, 11)
    assert found["uid"] not in (0, 1000)  # not root, and not the UID Ubuntu 24.04 bases give their `ubuntu` user
    # .dockerignore lets exactly the product through: no venvs, var/, models/ or tests in the build context
    assert found["app"] == sorted([*PARTS, "requirements.txt", "requirements-gpu.txt"])


def test_the_image_serves_label_studio_the_answers_the_code_gives_in_process(serve, model_dir, client):
    served = serve()
    assert requests.get(f"{served.url}/health", timeout=5).json()["status"] == "UP"  # public: load balancers probe it
    assert subprocess.run(["podman", "healthcheck", "run", served.name], capture_output=True).returncode == 0, "the image's HEALTHCHECK failed"

    setup = served.post("/setup", {"project": "3.1795892835", "schema": LABEL_CONFIG, "hostname": "http://localhost:8080", "access_token": "t"})
    assert setup.status_code == 200, setup.text
    version = setup.json()["model_version"]
    assert version.startswith("instant-")

    texts = [s["text"] for s in SAMPLES]
    assert served.post("/predict", predict_body(texts), auth=None).status_code == 401  # the ML_SERVER_BASIC_AUTH_* pair guards it
    response = served.post("/predict", predict_body(texts))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(SAMPLES) and {r["model_version"] for r in results} == {version}
    departments = [r["result"][0]["value"]["choices"][0] for r in results]
    in_process = client.post("/predict", data=json.dumps(predict_body(texts)), content_type="application/json").get_json()["results"]
    assert departments == [r["result"][0]["value"]["choices"][0] for r in in_process]
    assert [r["score"] for r in results] == pytest.approx([r["score"] for r in in_process], abs=1e-6)
    assert sum(d == s["department"] for d, s in zip(departments, SAMPLES)) / len(SAMPLES) > 0.7
    assert (model_dir / "store.sqlite3").exists(), "MODEL_DIR is not the mounted folder"


def test_gold_labels_in_the_model_dir_volume_outlive_the_container(serve):
    first = serve()
    created = first.post("/webhook", annotation_event("ANNOTATION_CREATED", 11, 5, SAMPLES[0]["text"], SAMPLES[0]["department"]))
    assert created.status_code == 200 and created.json()["outcome"] == "created", created.text
    first.stop()
    second = serve()
    status = requests.get(f"{second.url}/status", auth=AUTH, timeout=10).json()
    assert status["labels"]["labels"] == 1


def compose_commands() -> str:
    """The shell lines the compose file's opening comment tells a user to run, `docker compose up -d` last."""
    return _command_block(0, "docker compose up -d")


def _command_block(paragraph: int, last: str) -> str:
    comment = (repo_root() / "docker-compose.yml").read_text(encoding="utf-8").split("\n\n")[paragraph]
    lines = [line.removeprefix("#").strip() for line in comment.splitlines() if line.startswith("#   ")]
    assert lines and lines[-1] == last, f"the comment's command block should end with `{last}`: {lines}"
    return "\n".join(lines)


def test_the_compose_file_is_valid_with_exactly_the_command_its_comment_gives(tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman-compose needs podman (`make system-packages` installs it)")
    compose = [str(Path(sys.executable).parent / "podman-compose"), "-f", str(repo_root() / "docker-compose.yml")]
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    script = compose_commands().replace("docker compose up -d", shlex.join([*compose, "config"]))
    checked = subprocess.run(["bash", "-euc", script], env=clean, capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    backend = yaml.safe_load(checked.stdout)["services"]["backend"]
    assert backend["build"]["context"] == str(repo_root()) and backend["image"] == "dept-router:latest"
    assert "backend-data:/data" in backend["volumes"] and backend["environment"]["MODEL_DIR"] == "/data/models"
    assert set(yaml.safe_load(checked.stdout)["services"]) == {"label-studio", "backend"}
    # and without the comment's variables, it refuses with the name of what is missing
    refused = subprocess.run([*compose, "config"], env=clean, capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode != 0 and "LABEL_STUDIO_" in refused.stderr
    # the scale profile: PostgreSQL, Redis, two replicas behind a load balancer and a worker, on one store and queue
    scale = compose_commands().replace("docker compose up -d", "") + "\n" + _command_block(1, "docker compose --profile scale up -d")
    checked = subprocess.run(["bash", "-euc", scale.replace("docker compose --profile scale up -d",
                                                            shlex.join([*compose, "--profile", "scale", "config"]))],
                             env=clean, capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    services = yaml.safe_load(checked.stdout)["services"]
    assert set(services) == {"label-studio", "backend", "backend-2", "router", "postgres", "redis", "worker"}
    for name in ("backend", "backend-2", "worker"):
        assert services[name]["environment"]["STORE_URL"].startswith("postgresql://router:")
        assert services[name]["environment"]["QUEUE_URL"] == "redis://redis:6379/0" and "backend-data:/data" in services[name]["volumes"]
    assert services["worker"]["command"] == ["python", "-m", "training.worker"]


def test_the_build_gets_this_machines_pip_sources_mounted_where_pip_in_the_build_looks():
    printed = "\n".join([
        ":env:.find-links='/opt/wheels'",
        "global.find-links='/elsewhere'",  # the environment wins, as in pip
        "global.extra-index-url='file:///opt/pypi/simple https://mirror.example/simple'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",  # not a source: the requirements pin torch themselves
    ])
    build_args, mounts = container.host_pip_sources(printed)
    assert build_args == {"PIP_FIND_LINKS": "/mnt/host/opt/wheels",
                          "PIP_EXTRA_INDEX_URL": "file:///mnt/host/opt/pypi/simple https://mirror.example/simple",
                          "PIP_CERT": "/mnt/host/etc/ssl/certs/ca-certificates.crt"}
    # a local index's pages link to ../../files/: its parent folder is mounted
    assert mounts == {"/opt/wheels": "/mnt/host/opt/wheels", "/opt/pypi": "/mnt/host/opt/pypi",
                      "/etc/ssl/certs/ca-certificates.crt": "/mnt/host/etc/ssl/certs/ca-certificates.crt"}
