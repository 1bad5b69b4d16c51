-- pytest-aikernel bundled init for aikernel_audit (run by the application user, who owns all).
CREATE SCHEMA IF NOT EXISTS audit;     -- event logging
