"""Build and run the backend's image on a machine without a Docker engine or a reachable registry, as root.

    python -m tools.container build [--tag localhost/dept-router:local] [--gpu]
    python -m tools.container run --model-dir DIR [--tag ...] [--port 9090] [-e NAME=VALUE ...]

What this machine needs, each measured here (Debian 12, Debian's buildah 1.28, podman 4.3, runc, mmdebstrap):

- No registry: the base image is made from Debian's packages (`mmdebstrap`, through this machine's apt sources)
  and kept in container storage as BASE_IMAGE, so later builds reuse it.
- `buildah bud --isolation chroot` builds; `--layers` reuses every step whose inputs did not change.
- pip inside the build takes this machine's pip sources (local wheel folders and indexes, the CA that signs the
  proxied connection), mounted read-only under /mnt/host: otherwise torch would be a multi-GB CUDA download and
  PyPI's certificate would not verify.
- `podman run` fails with the default runtime (crun: "setrlimit RLIMIT_NOFILE: Operation not permitted", then
  "cgroups in hybrid mode not supported"). It works with `--runtime runc` and explicit `--ulimit`s below podman's
  own limits (there is no CAP_SYS_RESOURCE to raise them).
"""
from __future__ import annotations

import argparse
import ast
import fcntl
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/debian:bookworm-mmdebstrap"
TOOLS = ("buildah", "podman", "runc", "mmdebstrap")
# The Debian archive entries: the base gets the same mirror as this machine, and no third-party repository.
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
# Like Debian's slim images: no documentation or translations, and dpkg without an fsync per file.
DPKG_OPTIONS = ("force-unsafe-io", "path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
                "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias")
HOST_MOUNT = "/mnt/host"
PIP_SOURCES = ("index-url", "extra-index-url", "find-links", "cert")
NPROC = 4096


def unavailable_reason() -> str | None:
    """Why images cannot be built and run here, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not installed; `make system-packages` installs {', '.join(TOOLS)} with apt-get as root "
                "(a machine with a Docker engine builds the image with `docker build .` instead)")
    if os.geteuid() != 0:
        return "buildah, podman and mmdebstrap are run as root here, as measured; run this as root"
    return None


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **kwargs)


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def ensure_base_image(name: str = BASE_IMAGE, refresh: bool = False) -> str:
    """A Debian 12 base image made from Debian's packages (2-4 minutes the first time, then kept)."""
    # Several worktrees' test runs share the container storage: one makes the base, the others wait for it.
    with open(Path(tempfile.gettempdir()) / "dept-router-base-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_exists(name) and not refresh:
            return name
        sources = next((path for path in APT_SOURCES if path.exists()), None)
        if sources is None:
            raise RuntimeError(f"no apt sources at {' or '.join(map(str, APT_SOURCES))} to make the base image from")
        with tempfile.TemporaryDirectory(prefix="base-image-") as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            run(["mmdebstrap", "--quiet", "--variant=minbase", *(f"--dpkgopt={o}" for o in DPKG_OPTIONS), "bookworm", str(rootfs), str(sources)])
            container = run(["buildah", "from", "scratch"], capture_output=True, text=True).stdout.strip()
            try:
                run(["buildah", "add", "--quiet", container, str(rootfs), "/"], stdout=subprocess.DEVNULL)
                run(["buildah", "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", "/bin/bash",
                     container])
                run(["buildah", "commit", "--quiet", container, name], stdout=subprocess.DEVNULL)
            finally:
                subprocess.run(["buildah", "rm", container], capture_output=True)
        return name


def host_pip_sources(pip_config_list: str) -> tuple[dict[str, str], dict[str, str]]:
    """This machine's pip sources as build arguments, and the host paths they need mounted (host → build path).

    `pip_config_list` is what `pip config list` prints; environment variables win over configuration files.
    """
    rank = {"global": 0, "user": 1, "site": 2, ":env:": 3}
    chosen: dict[str, tuple[int, str]] = {}
    for line in pip_config_list.splitlines():
        match = re.fullmatch(r"(?P<scope>[^.]+)\.(?P<key>[\w-]+)=(?P<value>'.*'|\".*\")", line.strip())
        if not match or match["key"] not in PIP_SOURCES:
            continue
        priority = rank.get(match["scope"], 0)
        if priority >= chosen.get(match["key"], (-1, ""))[0]:
            chosen[match["key"]] = (priority, ast.literal_eval(match["value"]))
    build_args, mounts = {}, {}
    for key, (_, value) in chosen.items():
        items = []
        for item in value.split():
            path = item.removeprefix("file://")
            if not path.startswith("/"):
                items.append(item)  # a remote index: reachable from the build as it is from here
                continue
            # A local index's pages link to files beside it (../../files/x.whl): mount its parent.
            mounted = str(Path(path).parent) if key.endswith("index-url") else path
            mounts[mounted] = HOST_MOUNT + mounted
            items.append(item.replace(path, HOST_MOUNT + path))
        build_args["PIP_" + key.upper().replace("-", "_")] = " ".join(items)
    return build_args, mounts


def build(tag: str, base: str | None = None, gpu: bool = False, context: Path = REPO) -> str:
    """Build the image from `context`'s Dockerfile; without `gpu`, without requirements-gpu.txt (a CPU image)."""
    pip_config = run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    build_args, mounts = host_pip_sources(pip_config)
    if base:
        build_args["BASE_IMAGE"] = base
    if not gpu:
        build_args["EXTRA_REQUIREMENTS"] = ""
    run(["buildah", "bud", "--isolation", "chroot", "--layers", "--force-rm", "--format", "docker", "--tag", tag,
         *(f"--volume={host}:{inside}:ro" for host, inside in mounts.items()),
         *(f"--build-arg={name}={value}" for name, value in build_args.items()), str(context)])
    return tag


def run_command(tag: str, *command: str, name: str | None = None, model_dir: Path | None = None, port: int | None = None,
                env: dict[str, str] | None = None, detach: bool = False) -> list[str]:
    """`podman run` of the image as this machine allows it; MODEL_DIR on a host folder, the port on 127.0.0.1."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    options = [
        # Limits podman may set without CAP_SYS_RESOURCE: no more open files than this process may have, and
        # far fewer processes than the 32768 podman lowers its own RLIMIT_NPROC to (measured in /proc/PID/limits).
        f"--ulimit=nofile={nofile[0]}:{nofile[1]}", f"--ulimit=nproc={NPROC}:{NPROC}",
        # No systemd here to time the HEALTHCHECK; `podman healthcheck run` still runs it on demand.
        "--health-interval=disable",
        *([f"--name={name}"] if name else ["--rm"]), *(["--detach"] if detach else []),
        *([f"--publish=127.0.0.1:{port}:9090"] if port else []), *([f"--volume={model_dir}:/data/models"] if model_dir else []),
        *(f"--env={k}={v}" for k, v in (env or {}).items()),
    ]
    return ["podman", "--runtime", "runc", "run", *options, tag, *command]


def run_in_image(tag: str, *command: str) -> str:
    """What `command` prints when run in a throw-away container of the image, as the image's user."""
    return run(run_command(tag, *command), capture_output=True, text=True).stdout


def image_user(tag: str) -> tuple[int, int]:
    """The UID and GID the image runs as: a bind-mounted MODEL_DIR must be theirs."""
    uid, gid = run_in_image(tag, "sh", "-c", "id -u; id -g").split()
    return int(uid), int(gid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.container", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="make the Debian base if missing, then build the image with buildah")
    build_parser.add_argument("--gpu", action="store_true", help="also install requirements-gpu.txt (unsloth & co.; needs CUDA to be of use)")
    build_parser.add_argument("--refresh-base", action="store_true", help="make the Debian base image again (security updates)")
    run_parser = commands.add_parser("run", help="serve the image with podman in the foreground (Ctrl-C stops it)")
    run_parser.add_argument("--model-dir", type=Path, required=True, help="host folder mounted as MODEL_DIR (made and handed to the image's user)")
    run_parser.add_argument("--port", type=int, default=9090, help="port on 127.0.0.1 (default: %(default)s)")
    run_parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the backend (repeatable)")
    for command in (build_parser, run_parser):
        command.add_argument("--tag", default="localhost/dept-router:local", help="image name (default: %(default)s)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if args.command == "build":
        build(args.tag, base=ensure_base_image(refresh=args.refresh_base), gpu=args.gpu)
        print(f"built {args.tag}; serve it with: python -m tools.container run --tag {args.tag} --model-dir var/container-models")
        return 0
    args.model_dir.mkdir(parents=True, exist_ok=True)
    os.chown(args.model_dir, *image_user(args.tag))
    env = dict(item.split("=", 1) for item in args.env)
    name = f"dept-router-{os.getpid()}"
    try:
        return subprocess.run(run_command(args.tag, name=name, model_dir=args.model_dir.resolve(), port=args.port, env=env)).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        subprocess.run(["podman", "rm", "--force", name], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
