"""The balancer kinds' registry: one record per kind, and what the factory, doctor and
check-config take from it."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hapair.balancer import kinds
from hapair.balancer.explain import explain_balancer
from hapair.balancer.kinds import REGISTRY, HostNeed, PlaneSite, Program, make_plane, spec_for
from hapair.config.balancer import KINDS, Balancer
from hapair.config.load import validate_config
from hapair.config.model import Config
from hapair.errors import BalancerError
from hapair.ops.doctor_checks import check_balancer_sysctls, check_tools, sysctl_fix, tools_needed

ROOT = Path(__file__).resolve().parents[2]
#: Each kind's home: the module and class its data plane is built from.
HOMES = {
    "nat": ("hapair.balancer.nat", "NatDataPlane"),
    "dr": ("hapair.balancer.dr", "DrDataPlane"),
    "proxy": ("hapair.balancer.engine", "EngineDataPlane"),
    "redirect": ("hapair.balancer.engine", "EngineDataPlane"),
    "dns": ("hapair.balancer.dns", "DnsDataPlane"),
}


def config(kind: str, **extra: Any) -> Config:
    balancer: dict[str, Any] = {
        "kind": kind, "listen": "10.0.0.50:80", "backend": [{"address": "10.0.1.21:80"}],
        **({"dns": {"names": ["www.example.com"]}} if kind == "dns" else {}), **extra,
    }  # fmt: skip
    return validate_config(
        {
            "node": {"name": "a", "priority": 150},
            "cluster": {"name": "c", "peers": ["10.0.0.2"]},
            "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
            "balancer": balancer,
        },
        check_secret=False,
    )


def balancer(kind: str, **extra: Any) -> Balancer:
    b = config(kind, **extra).balancer
    assert b is not None
    return b


def replace_spec(monkeypatch: pytest.MonkeyPatch, kind: str, **changes: Any) -> None:
    """Swap ``kind``'s record in the registry for one with ``changes``."""
    swapped = tuple(
        dataclasses.replace(s, **changes) if s.name == kind else s for s in kinds.REGISTRY
    )
    monkeypatch.setattr(kinds, "REGISTRY", swapped)


def test_every_configurable_kind_has_exactly_one_record() -> None:
    assert collections.Counter(s.name for s in REGISTRY) == collections.Counter(KINDS)
    assert [s.name for s in REGISTRY] == list(KINDS)
    assert set(HOMES) == set(KINDS)


def test_an_unknown_kind_has_no_record() -> None:
    with pytest.raises(KeyError):
        spec_for("ipvs")  # type: ignore[arg-type]


class FakePlane:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.mark.parametrize("kind", KINDS)
def test_the_factory_builds_each_kinds_plane_from_its_home(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module, name = HOMES[kind]
    monkeypatch.setattr(f"{module}.{name}", FakePlane)
    b = balancer(kind)
    plane = make_plane(b, run_dir=tmp_path, interface="eth7", log="LOG")
    assert isinstance(plane, FakePlane)
    assert plane.args == (b,)
    expected = {
        "nat": {},
        "dr": {"interface": "eth7"},
        "proxy": {"run_dir": tmp_path, "log": "LOG"},
        "redirect": {"run_dir": tmp_path, "log": "LOG"},
        "dns": {"run_dir": tmp_path, "log": "LOG"},
    }[kind]
    assert plane.kwargs == expected


def test_the_factory_takes_the_builder_from_the_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built: list[tuple[Balancer, PlaneSite]] = []

    def build(b: Balancer, site: PlaneSite) -> Any:
        built.append((b, site))
        return "the plane"

    replace_spec(monkeypatch, "dns", build=build)
    b = balancer("dns")
    assert make_plane(b, run_dir=tmp_path, interface="eth7") == "the plane"
    assert built == [(b, PlaneSite(tmp_path, "eth7", None))]


def test_doctor_takes_the_programs_from_the_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = config("nat")
    assert tools_needed(cfg) == ["nft"]
    replace_spec(monkeypatch, "nat", programs=lambda b: (Program("ip"), Program("nginx")))
    assert tools_needed(cfg) == ["ip", "nginx"]
    findings = check_tools(cfg, lambda name: None)
    assert [f.message for f in findings] == [
        "ip is not installed; the nat balancer needs it",
        "nginx is not installed; the nat balancer needs it",
    ]


def test_doctor_names_the_setting_of_a_configured_program(tmp_path: Path) -> None:
    cfg = config("proxy", proxy={"binary": str(tmp_path / "nginx")})
    [finding] = check_tools(cfg, lambda name: None)
    assert finding.level == "error"
    assert (
        finding.message == f"balancer.proxy.binary: {tmp_path / 'nginx'} is not an executable file"
    )


def test_doctor_takes_the_host_needs_from_the_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Path] = []

    def unmet(b: Balancer, net: Path) -> None:
        seen.append(net)
        raise BalancerError("net.x.y is 0 here")

    cfg = config("dr")
    replace_spec(monkeypatch, "dr", host=lambda b: (HostNeed("a note"), HostNeed("met", "net.x.y")))
    assert [(f.level, f.message) for f in check_balancer_sysctls(cfg, tmp_path)] == [
        ("ok", "a note"),
        ("ok", "met"),
    ]
    needs = (HostNeed("x on", "net.x.y", unmet), HostNeed("never said"))
    replace_spec(monkeypatch, "dr", host=lambda b: needs)
    [finding] = check_balancer_sysctls(cfg, tmp_path)
    assert (finding.level, finding.message) == ("error", "net.x.y is 0 here")
    assert finding.fix == sysctl_fix("net.x.y", 1)
    assert seen == [tmp_path / "net"]


def test_check_config_takes_label_and_needs_from_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = balancer("nat")
    lines = explain_balancer(b)
    assert lines[0].startswith("balancer: L4 NAT (nftables DNAT) on 10.0.0.50:80")
    assert lines[-1] == "balancer needs: net.ipv4.ip_forward=1 on both nodes (hapair run checks)"
    replace_spec(monkeypatch, "nat", label=lambda b: "a label", needs=lambda b: None)
    lines = explain_balancer(b)
    assert lines[0].startswith("balancer: a label on 10.0.0.50:80")
    assert not any(line.startswith("balancer needs") for line in lines)


@pytest.mark.parametrize(
    ("kind", "extra", "label", "needs"),
    [
        ("proxy", {}, "reverse proxy (nginx)", "net.ipv4.ip_nonlocal_bind=1"),
        ("proxy", {"proxy": {"engine": "haproxy"}}, "reverse proxy (haproxy)", None),
        ("proxy", {"mode": "cold"}, "reverse proxy (nginx)", None),
        ("redirect", {}, "HTTP 302 redirect (nginx)", "net.ipv4.ip_nonlocal_bind=1"),
        ("redirect", {"mode": "cold"}, "HTTP 302 redirect (nginx)", None),
        ("dr", {}, "direct routing (nftables MAC rewrite)", "`hapair realserver up VIP`"),
        ("dns", {}, "DNS round robin (hapair's responder)", None),
    ],
)
def test_each_kinds_label_and_needs(
    kind: str, extra: dict[str, Any], label: str, needs: str | None
) -> None:
    spec = spec_for(kind)  # type: ignore[arg-type]
    b = balancer(kind, **extra)
    assert spec.label(b) == label
    got = spec.needs(b)
    assert got is None if needs is None else got is not None and got.startswith(needs)


def _modules(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(json.loads(out.stdout))


#: Builds ``balancer(kind)`` in a fresh interpreter, importing only configuration.
_BALANCER = """
from hapair.config.load import validate_config
def balancer(kind):
    b = {"kind": kind, "listen": "10.0.0.50:80", "backend": [{"address": "10.0.1.21:80"}]}
    if kind == "dns":
        b["dns"] = {"names": ["www.example.com"]}
    return validate_config({
        "node": {"name": "a", "priority": 150}, "cluster": {"name": "c", "peers": ["10.0.0.2"]},
        "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}], "balancer": b,
    }, check_secret=False).balancer
"""


def test_a_kinds_code_is_imported_only_to_build_its_plane(tmp_path: Path) -> None:
    homes = {module for module, _ in HOMES.values()}
    described = _modules(
        _BALANCER + "from hapair.balancer.kinds import REGISTRY\n"
        "for s in REGISTRY:\n"
        "    b = balancer(s.name)\n"
        "    s.label(b), s.needs(b), s.programs(b), s.host(b)\n"
    )
    assert "hapair.balancer.kinds" in described
    assert sorted(described & homes) == []
    built = _modules(
        _BALANCER + "from hapair.balancer.kinds import make_plane\n"
        "import pathlib\n"
        f"make_plane(balancer('dns'), run_dir=pathlib.Path({str(tmp_path)!r}), interface='eth0')\n"
    )
    assert sorted(built & homes) == ["hapair.balancer.dns"]
