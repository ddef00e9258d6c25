"""edgelb: a software load balancer for the edge of bare-metal Kubernetes clusters."""

__version__ = "0.1.0"
