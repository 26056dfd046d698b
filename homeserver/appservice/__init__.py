"""Application services: registrations, token auth, transactions and queries (the AS API)."""
