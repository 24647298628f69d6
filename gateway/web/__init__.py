"""The technician's local page: a view over the running daemon (status, inspect, the command path).

Off unless ``web.enabled``; the daemon imports ``gateway.web.server`` (and with it aiohttp) only
then. The pieces: ``guard`` (Host/Origin checks, sessions and CSRF tokens, the login throttle),
``feed`` (the latest values and the charts' history, fed from the scheduler's batches), ``pages``
and ``chart`` (server-rendered HTML and inline SVG), ``server`` (the aiohttp application and its
live-update stream), ``history``/``logring``/``passwd`` (the history buckets, the log ring, the
password hashes).
"""
