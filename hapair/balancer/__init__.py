"""hapair.balancer: the local load balancer that the MASTER runs (five kinds: `kinds`)."""
