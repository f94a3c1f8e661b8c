"""Small pieces every pxo process shares: table schemas, Arrow IPC framing, the SQL gate.

Nothing here imports bcc, grpc servers or FastAPI; it is safe for any process.
"""
