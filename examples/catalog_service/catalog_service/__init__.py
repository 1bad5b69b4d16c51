"""A small catalog service: the kind of service whose integration tests use pytest-aikernel."""
