"""Learning what to forward from a Kubernetes cluster: list+watch, translation, IPAM."""
