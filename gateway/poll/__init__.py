"""The scheduler: one poll loop per device on the monotonic grid of its interval, turn-taking on a
shared bus, backoff, device health; report by exception (deadband, heartbeat).
"""
