"""High availability: who leads (and so owns the VIPs and writes status)."""
