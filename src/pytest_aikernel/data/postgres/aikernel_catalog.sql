-- pytest-aikernel bundled init for aikernel_catalog (run by the application user, who owns all).
-- Schemas of the AI Kernel platform's catalog database (infrastructure README, "Schemas").
CREATE SCHEMA IF NOT EXISTS catalog;   -- resource metadata
CREATE SCHEMA IF NOT EXISTS metadata;  -- property tracking
CREATE SCHEMA IF NOT EXISTS lineage;   -- data lineage
CREATE SCHEMA IF NOT EXISTS audit;     -- event logging
