"""From handled messages to committed rows.

Transports hand each decoded message to the ``Batcher``; it collects them
into a bounded batch, flushes on N readings or T milliseconds in one
transaction (``writer``), and only then acknowledges the senders, in the
order their messages arrived.
"""
