"""hapair.lab: a two-node failover lab in network namespaces, a client probe, and drills.

topology (Lab: namespaces, links, faults, processes), nodes (hapair daemons), keepalived
(the same pair run by keepalived), service (VIP-bound echo/HTTP), probe (client probe and its
pure analysis), client (drives the probe), drill (scenarios and timelines), commands (CLI).
"""
