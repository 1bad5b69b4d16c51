// Neo4j init file for the integration tests (pyproject.toml: aikernel_neo4j_init).
CREATE CONSTRAINT resource_id IF NOT EXISTS FOR (r:Resource) REQUIRE r.id IS UNIQUE;
/* a seeded node; the ';' in this string is not a separator */
MERGE (r:Resource {id: 'seeded', note: 'made; by init'});
