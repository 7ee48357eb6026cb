"""hapair.runtime."""
