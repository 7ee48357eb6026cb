"""hapair.balancer: the local load balancer run by the pair (issue 3, in progress)."""
