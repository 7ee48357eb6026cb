"""[metrics] on the real pair: /role follows the election, /metrics counts what happened."""

from __future__ import annotations

import json
import os

import pytest

from hapair.lab.addresses import LAN4
from hapair.lab.nodes import Timers
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

SCRAPE = """
import json, sys, urllib.request, urllib.error
from prometheus_client.parser import text_string_to_metric_families
out = {}
for host in sys.argv[1:]:
    try:
        code = urllib.request.urlopen(f"http://{host}:9650/role", timeout=2).status
    except urllib.error.HTTPError as exc:
        code = exc.code
    text = urllib.request.urlopen(f"http://{host}:9650/metrics", timeout=2).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))
            samples[key] = s.value
    out[host] = {"role": code, "samples": samples}
print(json.dumps(out))
"""


def scrape(lab: Lab) -> dict[str, dict[str, object]]:
    proc = lab.python("c", ["-c", SCRAPE, LAN4["a"], LAN4["b"]])
    data = json.loads(proc.stdout)
    return {"a": data[LAN4["a"]], "b": data[LAN4["b"]]}


def test_role_endpoint_and_counters_follow_the_pair() -> None:
    with Lab(f"hp{os.getpid() % 10000}", timers=Timers(interval=0.05, dead_after=4)) as lab:
        for node in ("a", "b"):
            cfg = lab.hapair.config_path(node)
            cfg.write_text(cfg.read_text() + '\n[metrics]\nlisten = "0.0.0.0:9650"\n')
        lab.hapair.start("a")
        lab.hapair.start("b")
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10)
        seen = scrape(lab)
        assert seen["a"]["role"] == 200 and seen["b"]["role"] == 503
        a = seen["a"]["samples"]
        assert isinstance(a, dict)
        assert a["hapair_role|role=MASTER"] == 1.0 and a["hapair_role|role=BACKUP"] == 0.0
        assert a["hapair_heartbeats_sent_total"] > 0
        assert a["hapair_heartbeats_received_total|peer=b"] > 0
        assert a["hapair_garps_sent_total"] > 0
        assert a["hapair_peer_last_seen_seconds|peer=b"] < 1.0

        cfg_a = str(lab.hapair.config_path("a"))
        lab.python("a", ["-m", "hapair", "handover", "-c", cfg_a])
        assert wait_until(lambda: scrape(lab)["b"]["role"] == 200, timeout=5)
        after = scrape(lab)
        assert after["a"]["role"] == 503
        b = after["b"]["samples"]
        assert isinstance(b, dict)
        assert b["hapair_transitions_total|from=BACKUP|reason=peer_resigned|to=MASTER"] == 1.0
