"""The FastAPI scoring service, review pages, store, security and settings."""
