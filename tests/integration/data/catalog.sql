-- User init file for the integration tests (set in pyproject.toml as aikernel_postgres_init).
CREATE TABLE catalog.resources (
    id   serial PRIMARY KEY,
    name text NOT NULL UNIQUE  -- a semicolon in a comment; is fine
);
INSERT INTO catalog.resources (name) VALUES ('seeded; by init file');
