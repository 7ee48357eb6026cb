"""Container tests: one Docker engine, images built here with no registry, everything removed.

The images come from `compose/Dockerfile` on a base made by `compose/local-base.sh` (Debian
packages and this host's wheels) unless `HAPAIR_BASE_IMAGE` names one that exists. Whatever a
test session builds it removes at the end; `HAPAIR_KEEP_IMAGES=1` keeps them for the next run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_DEFAULT = "hapair-base:local"
# Every image this suite builds carries this label, so a crashed run's leftovers can be found.
LABEL = "org.hapair.test"
SESSION = f"{os.getpid()}"
# With HAPAIR_KEEP_IMAGES=1 the built images keep one tag, replaced by the next session's.
IMAGE_TAG = "keep" if os.environ.get("HAPAIR_KEEP_IMAGES") == "1" else SESSION


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder `docker`."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


def _unavailable(why: str) -> None:
    if os.environ.get("HAPAIR_REQUIRE_DOCKER") == "1":
        pytest.fail(f"container tests required (HAPAIR_REQUIRE_DOCKER=1) but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of the local engine (skips, or fails under HAPAIR_REQUIRE_DOCKER=1, without)."""
    if os.geteuid() != 0:
        _unavailable("needs root (containers with NET_ADMIN, debootstrap)")
    try:
        import docker
    except ImportError:
        _unavailable("the docker SDK is not installed (pip install 'hapair[docker]')")
    try:
        client = docker.from_env(version="auto", timeout=120)
        client.ping()
    except Exception as exc:  # any failure to reach the engine means no container tests
        _unavailable(f"no Docker engine answers ({exc}); start one: scripts/docker-engine.sh")
    yield client
    client.close()


def _keep() -> bool:
    return os.environ.get("HAPAIR_KEEP_IMAGES") == "1"


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> Iterator[str]:
    """The base image's tag: an existing one, or one built now from Debian packages."""
    import docker

    tag = os.environ.get("HAPAIR_BASE_IMAGE", BASE_DEFAULT)
    made = False
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        proc = subprocess.run(
            [str(REPO / "compose" / "local-base.sh"), tag],
            # The wheels come from the test run's own interpreter and its pip settings.
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"compose/local-base.sh failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        made = True
    yield tag
    if made and not _keep():
        docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def build_image(docker_client: Any, base_image: str) -> Iterator[Callable[[str], str]]:
    """Build a target of compose/Dockerfile once per session; return its tag."""
    import docker

    built: dict[str, str] = {}

    def build(target: str) -> str:
        if target in built:
            return built[target]
        tag = f"hapair-test-{target}:{IMAGE_TAG}"
        try:
            docker_client.images.build(
                path=str(REPO),
                dockerfile="compose/Dockerfile",
                buildargs={"BASE": base_image},
                target=target,
                tag=tag,
                labels={LABEL: SESSION},
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)
            pytest.fail(f"docker build --target {target} failed: {exc}\n{log[-4000:]}")
        built[target] = tag
        return tag

    yield build
    if not _keep():
        for tag in built.values():
            docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def node_image(build_image: Callable[[str], str]) -> str:
    """The image of the compose lab's containers."""
    return build_image("node")


@pytest.fixture(scope="session")
def compose_lab(docker_client: Any, node_image: str) -> Iterator[Any]:
    """The compose lab, up and serving, under the host-wide lab lock; removed at the end."""
    from tests.docker.composelab import ComposeLab, compose_lock

    with compose_lock():
        lab = ComposeLab(f"hpc{SESSION}", node_image, client=docker_client)
        try:
            lab.up()
            yield lab
        finally:
            lab.down()
