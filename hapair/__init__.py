"""hapair: a failover pair that keeps one floating VIP alive."""

__version__ = "0.1.0"
