"""Server-Server API servlets (``keys``: the key server and notary)."""
