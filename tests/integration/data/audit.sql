CREATE TABLE audit.events (id serial PRIMARY KEY, kind text NOT NULL);
INSERT INTO audit.events (kind) VALUES ('seeded');
