"""The technician's local page: live values, charts, test reads and the log, served by the gateway.

A view over the daemon, never a second path to the devices. Imported only when ``web.enabled``:
nothing in gateway imports this package at start, so a gateway with the page off pays nothing for
it (aiohttp included) in memory. Of its modules, ``passwd``, ``logring``, ``history``, ``guard``,
``feed``, ``chart`` and ``pages`` import no aiohttp (the CLI's ``gateway web passwd`` uses the
first); ``server`` (the aiohttp application) and ``live`` (its server-sent-event stream) do.
"""
