"""Fleet configuration over MQTT: signed pushes tried as one change and rolled back by themselves.

``envelope`` signs and verifies (Ed25519, ``cryptography``: imported only when ``fleet.enabled``),
``redact`` keeps secrets home, ``store`` keeps the pushed copy, the trial marker and the highest
version in the data directory, ``manager`` answers the requests and runs the trials.
"""
