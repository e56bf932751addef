"""Ways readings arrive. The contract every transport meets:

- Decode each message with the codec its route names, into ``Decoded``.
- Hand it to ``Batcher.submit`` (or ``dead_letter`` when nothing in it could
  be used) together with an acknowledgement that the batcher calls after
  the commit: PUBACK, an HTTP answer, a CoAP response. Never acknowledge
  before.
- When ``Batcher.full``, push back in the protocol's own way (stop reading
  the socket, 503 with Retry-After, 5.03 with Max-Age) and resume from an
  ``on_space`` callback.
- Log per connection or per failure, never per message; count instead.
"""
