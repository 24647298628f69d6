"""city-gateway: polls field devices, buffers every reading durably, forwards it over MQTT."""

__version__ = "0.1.0"
