"""Wires the stages together: the daemon, the serialized reload queue, the control socket's server,
the systemd watchdog and notify, and the daemon's side of `gateway read`/`write`.
"""
