"""The platform's decoder, where the README promises it: ``gateway.encoding.decode_telemetry``
(and ``split_devices`` for group messages).

The wire formats themselves live in gateway.wire; this module only keeps the published import
path working for platforms that decode with it.
"""

from gateway.wire.encoding import NOT_A_NUMBER, decode_telemetry, split_devices

__all__ = ["NOT_A_NUMBER", "decode_telemetry", "split_devices"]
