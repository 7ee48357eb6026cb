"""hapair.testing."""
