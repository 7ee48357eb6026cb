"""The operational edges: systemd notify, journald, metrics, hooks, discovery, diagnostics."""
