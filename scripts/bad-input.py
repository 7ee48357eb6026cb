#!/usr/bin/env python3
"""Issue 10 point 5: run `hapair check-config` on each bad input; print exit status and message.

Usage: PYTHONPATH=. python scripts/bad-input.py [CASE ...]   (a hang shows as HANG after 10 s)
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

BASE = '''
[node]
name = "alpha"
priority = 150

[cluster]
name = "web"
peers = [PEERS]
secret_file = "SECRET"
INTERVAL

[[vip]]
address = "VIP"
interface = "IFACE"
'''
d = Path(tempfile.mkdtemp(prefix="hapair-bad-input-"))
secret = d / "secret"; secret.write_text("A" * 44 + "\n"); secret.chmod(0o600)
fifo = d / "fifo"; os.mkfifo(fifo)
afile = d / "afile"; afile.write_text("x")

def cfg(peers='"192.0.2.2"', vip="198.51.100.50/24", iface="eth0", interval="", extra="", sec=secret, bom=False):
    t = BASE.replace("PEERS", peers).replace("VIP", vip).replace("IFACE", iface).replace("INTERVAL", interval).replace("SECRET", str(sec)) + extra
    return ("\ufeff" if bom else "") + t

cases = {
 "5000-digit int": cfg(extra="[garp]\nburst = " + "9"*5000 + "\n"),
 "5000-deep arrays": cfg(extra="[runtime]\nstate_dir = " + "["*5000 + "]"*5000 + "\n"),
 "401-digit interval": cfg(interval="interval = " + "1"*401),
 "BOM": cfg(bom=True),
 "FIFO secret": cfg(sec=fifo),
 "peer 127.0.0.1": cfg(peers='"127.0.0.1"'),
 "peer 255.255.255.255": cfg(peers='"255.255.255.255"'),
 "peer multicast": cfg(peers='"224.0.0.1"'),
 "peer unspecified": cfg(peers='"0.0.0.0"'),
 "peer subnet broadcast": cfg(peers='"198.51.100.255"'),
 "peer == VIP": cfg(peers='"198.51.100.50"'),
 "VIP /0": cfg(vip="198.51.100.50/0"),
 "VIP /1": cfg(vip="10.0.0.50/1"),
 "VIP ipv4-mapped": cfg(vip="::ffff:10.0.0.50/128"),
 "VIP fe80": cfg(vip="fe80::50/64"),
 "VIP on lo": cfg(iface="lo"),
 "backend == VIP:port": cfg(extra='[balancer]\nkind = "nat"\nlisten = "198.51.100.50:80"\n[[balancer.backend]]\naddress = "198.51.100.50:80"\n'),
 "hook relative": cfg(extra='[[hook]]\non = ["master"]\ncommand = ["notify"]\n'),
 "hook missing": cfg(extra='[[hook]]\non = ["master"]\ncommand = ["/nonexistent/notify"]\n'),
 "track relative": cfg(extra='[[track]]\nkind = "command"\nweight = 10\ncommand = ["check"]\n'),
 "track missing": cfg(extra='[[track]]\nkind = "command"\nweight = 10\ncommand = ["/nonexistent/check"]\n'),
 "state_dir file": cfg(extra=f'[runtime]\nstate_dir = "{afile}"\n'),
}
only = sys.argv[1:]
for name, text in cases.items():
    if only and name not in only: continue
    f = d / "c.toml"; f.write_text(text)
    try:
        r = subprocess.run([sys.executable, "-m", "hapair", "check-config", str(f)], capture_output=True, text=True, timeout=10)
        out = (r.stderr.strip() or r.stdout.strip()).splitlines()
        tb = "TRACEBACK " if "Traceback" in r.stderr else ""
        warn = [l for l in r.stdout.splitlines() if "warning" in l and "one link" not in l and "second_burst" not in l]
        print(f"{name:24} rc={r.returncode} {tb}| " + " / ".join((out[-1:] if r.returncode else []) + warn)[:300])
        if r.returncode == 2:
            print("    " + "\n    ".join(r.stderr.strip().splitlines()[1:]) [:600])
    except subprocess.TimeoutExpired:
        print(f"{name:24} HANG")
import shutil  # noqa: E402

shutil.rmtree(d)
