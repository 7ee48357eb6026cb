"""hapair.wire."""
