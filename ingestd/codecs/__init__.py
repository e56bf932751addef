"""Payload formats. Each module turns one format's bytes into readings.

The contract every codec meets (see ``base``): given the raw payload and the
``Origin`` the transport knows, fill a ``Decoded`` with readings and with
rejects naming their position; raise ``DecodeError`` only when nothing in
the payload could be used.
"""
