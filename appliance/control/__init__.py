"""The control API: roles from SO_PEERCRED, an audit log, operators' backend changes, and
the HTTP+JSON server on a Unix socket that ``edgelb ctl`` and ``edgelb tui`` talk to."""
