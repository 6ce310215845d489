"""Processes that talk ZeroMQ + MessagePack, their client library and the protocol."""
