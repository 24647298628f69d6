"""The MQTT side: the publisher session (batches, PUBACK = ack, reconnect, status, will), the link
over aiomqtt/paho, TLS, the messages of a publish, remote commands, and the wall clock's sync state.
"""
