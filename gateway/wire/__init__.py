"""The wire formats of the platform contract: CBOR, JSON and packed, and their decoder
(also importable as gateway.encoding).
"""
