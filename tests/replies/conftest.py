"""The read side's tests are pure: no database, no server (the shared fixtures live in tests/conftest.py)."""
