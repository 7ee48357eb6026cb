"""hapair.lab."""
