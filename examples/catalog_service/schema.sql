-- the catalog service's own table, loaded into aikernel_catalog by pytest-aikernel (pytest.ini)
CREATE TABLE catalog.items (name text PRIMARY KEY);
