"""hapair.core."""
