"""The kernel datapath: nftables DNAT and conntrack, decided in Python."""
