-- Demo only: two users with the same rights, taking turns. Their first passwords are the ones
-- seed.py puts in the secrets; the rotator replaces them within a minute.
CREATE ROLE app_rw NOLOGIN;
GRANT CONNECT ON DATABASE shop TO app_rw;
CREATE ROLE app LOGIN PASSWORD 'demo-app-initial' IN ROLE app_rw;
CREATE ROLE app_clone LOGIN PASSWORD 'demo-clone-initial' IN ROLE app_rw;
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);
INSERT INTO orders (item) VALUES ('tea'), ('coffee');
GRANT SELECT ON orders TO app_rw;
