"""hapair.net."""
