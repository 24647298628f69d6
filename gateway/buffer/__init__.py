"""The store-and-forward buffer: ``Buffer`` (the async face, gateway.buffer.queue) and its flow
control (gateway.buffer.flow), the SQLite store on its writer thread (gateway.buffer.store) with its
point sets (gateway.buffer.pointsets) and size cap (gateway.buffer.cap), the seq marks and the files
beside the database (gateway.buffer.seqfile).
"""
