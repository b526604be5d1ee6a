"""An application that reads its database credentials the way AWS tells Python applications to,
through one of two AWS clients (--client):

  caching  AWS's own caching client (aws-secretsmanager-caching), which re-reads the secret only
           after its refresh interval (--refresh, its secret_refresh_interval); the application
           logs in with pg8000 at the secret's host and port (RDS Proxy, or its stand-in).
  wrapper  AWS's driver wrapper (aws-advanced-python-wrapper) over psycopg 3, with only its
           Secrets Manager plugin (plugins="aws_secrets_manager", wrapper_dialect="pg": no
           dialect probing, no failover or host monitoring). The plugin takes only the username
           and password from the secret, so the host, port and dbname it names are read once at
           start (boto3) and passed to every connect. The plugin keeps the secret in a cache
           shared by the whole process, and re-reads it on two occasions only:
             - a login refused for a bad password (28P01/28000, or "password authentication
               failed"): it reads the secret again and retries that login once, so the
               application sees success if the secret's new value works (the server still logs
               one failed login);
             - when the cached value is dropped after secrets_manager_expiration (--refresh),
               which happens only when the wrapper sweeps its secret cache, at most every 30
               minutes: in practice, for a process that lives minutes, only a refused login
               makes it re-read.

Modes:
  connect  a new connection for every query (a Lambda function, a script, a pool of one);
  hold     one connection, opened with the credentials read at start, that runs a query every
           200 ms until the end (a task that keeps its pool for its whole life).

It runs until its standard input closes, then prints one JSON line to stdout:
  {"mode": ..., "client": ..., "connections": N, "queries": N, "failed": N, "users": {...},
   "errors": [...]}
connections counts the connections the application asked for; users counts them by the user
they log in as (caching: the secret's username at each attempt; wrapper: current_user of each
connection that logged in). No password is ever printed: errors are the driver's (or the
wrapper's) messages, which never hold one, and the secret read at start keeps only its address.

Each client's modules are imported only when that client is chosen.

Usage: cached_client.py SECRET_ID --mode connect|hold --refresh SECONDS [--app NAME]
                        [--client caching|wrapper]
"""

import argparse
import json
import sys
import threading
import time


def caching_client(a, stats):
    """connect, query, close and release for the caching client with pg8000."""
    import botocore.session
    import pg8000.native
    from aws_secretsmanager_caching import SecretCache, SecretCacheConfig

    # The endpoint comes from AWS_ENDPOINT_URL, as for any AWS SDK client.
    client = botocore.session.get_session().create_client("secretsmanager")
    cache = SecretCache(SecretCacheConfig(secret_refresh_interval=a.refresh), client=client)

    def connect():
        s = json.loads(cache.get_secret_string(a.secret_id))
        stats["connections"] += 1
        stats["users"][s["username"]] = stats["users"].get(s["username"], 0) + 1
        conn = pg8000.native.Connection(
            user=s["username"],
            password=s["password"],
            host=s["host"] if "host" in s else s["database_host"],
            port=int(s.get("port", s.get("database_port", 5432))),
            database=s.get("dbname", s.get("database_name")),
            application_name=a.app,
            timeout=10,
        )
        return conn

    def query(conn):
        conn.run("SELECT 1")

    return connect, query, lambda conn: conn.close(), lambda: None


def wrapper_client(a, stats):
    """connect, query, close and release for AWS's driver wrapper (Secrets Manager plugin)."""
    import boto3
    import psycopg
    import aws_advanced_python_wrapper
    from aws_advanced_python_wrapper import AwsWrapperConnection

    # The endpoint comes from AWS_ENDPOINT_URL, for this read and for the wrapper's own client
    # (a boto3 client too), and the region from AWS_REGION.
    session = boto3.session.Session()

    def address():
        s = json.loads(
            session.client("secretsmanager").get_secret_value(SecretId=a.secret_id)[
                "SecretString"
            ]
        )
        return {
            "host": s["host"] if "host" in s else s["database_host"],
            "port": int(s.get("port", s.get("database_port", 5432))),
            "dbname": s.get("dbname", s.get("database_name")),
        }

    target = address()
    # Every GetSecretValue the wrapper makes from here on: the first, and one after each refused
    # login (its expiry sweep is 30 minutes away). Counted where every boto3 client calls AWS.
    import botocore.client

    make_api_call = botocore.client.BaseClient._make_api_call

    def counted(self, operation, params):
        if operation == "GetSecretValue":
            stats["secret_reads"] += 1
        return make_api_call(self, operation, params)

    botocore.client.BaseClient._make_api_call = counted
    stats["secret_reads"] = 0
    options = {
        "plugins": "aws_secrets_manager",
        "wrapper_dialect": "pg",
        "secrets_manager_secret_id": a.secret_id,
        "secrets_manager_expiration": a.refresh,
        "autocommit": True,
        "application_name": a.app,
        "connect_timeout": 10,
    }
    # Required unless the secret id is an ARN (the wrapper does not default it).
    if session.region_name:
        options["secrets_manager_region"] = session.region_name

    def connect():
        stats["connections"] += 1
        conn = AwsWrapperConnection.connect(psycopg.Connection.connect, **target, **options)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                user = cur.fetchone()[0]
        except BaseException:
            conn.close()
            raise
        stats["users"][user] = stats["users"].get(user, 0) + 1
        return conn

    def query(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    return connect, query, lambda conn: conn.close(), aws_advanced_python_wrapper.release_resources


def main():
    p = argparse.ArgumentParser()
    p.add_argument("secret_id")
    p.add_argument("--mode", choices=["connect", "hold"], default="connect")
    p.add_argument("--client", choices=["caching", "wrapper"], default="caching")
    p.add_argument(
        "--refresh",
        type=int,
        default=2,
        help="caching: the cache's secret_refresh_interval (s); "
        "wrapper: its secrets_manager_expiration (s)",
    )
    p.add_argument("--app", default="orders-api", help="application_name of the connections")
    a = p.parse_args()

    stop = threading.Event()

    def wait_for_eof():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()

    stats = {
        "mode": a.mode,
        "client": a.client,
        "connections": 0,
        "queries": 0,
        "failed": 0,
        "users": {},
        "errors": [],
    }
    make = caching_client if a.client == "caching" else wrapper_client
    connect, query, close, release = make(a, stats)

    def note_error(e):
        stats["failed"] += 1
        if len(stats["errors"]) < 10:
            stats["errors"].append(str(e)[:300])

    if a.mode == "connect":
        while not stop.is_set():
            try:
                conn = connect()
                try:
                    query(conn)
                    stats["queries"] += 1
                finally:
                    close(conn)
            except Exception as e:  # a refused login is what this client counts
                note_error(e)
            time.sleep(0.02)
    else:
        conn = None
        try:
            conn = connect()
        except Exception as e:
            note_error(e)
        while conn is not None and not stop.is_set():
            try:
                query(conn)
                stats["queries"] += 1
            except Exception as e:
                note_error(e)
            stop.wait(0.2)
        if conn is not None:
            close(conn)

    print(json.dumps(stats), flush=True)
    release()


if __name__ == "__main__":
    main()
