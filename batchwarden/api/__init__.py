"""The HTTP interface every replica serves (FastAPI on hypercorn, on trio)."""
