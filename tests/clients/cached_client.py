"""An application that reads its database credentials the way AWS tells Python applications to:
through AWS's own caching client (aws-secretsmanager-caching), which re-reads the secret only
after its refresh interval. It logs in through the application's path (the secret's host and
port: RDS Proxy, or its stand-in) with pg8000.

Modes:
  connect  a new connection for every query (a Lambda function, a script, a pool of one);
  hold     one connection, opened with the credentials read at start, that runs a query every
           200 ms until the end (a task that keeps its pool for its whole life).

It runs until its standard input closes, then prints one JSON line to stdout:
  {"mode": ..., "connections": N, "queries": N, "failed": N, "users": {...}, "errors": [...]}
No password is ever printed: errors are the driver's messages, which never hold one.

Usage: cached_client.py SECRET_ID --mode connect|hold --refresh SECONDS [--app NAME]
"""

import argparse
import json
import sys
import threading
import time

import botocore.session
import pg8000.native
from aws_secretsmanager_caching import SecretCache, SecretCacheConfig


def main():
    p = argparse.ArgumentParser()
    p.add_argument("secret_id")
    p.add_argument("--mode", choices=["connect", "hold"], default="connect")
    p.add_argument("--refresh", type=int, default=2, help="the cache's secret_refresh_interval (s)")
    p.add_argument("--app", default="orders-api", help="application_name of the connections")
    a = p.parse_args()

    stop = threading.Event()

    def wait_for_eof():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()

    # The endpoint comes from AWS_ENDPOINT_URL, as for any AWS SDK client.
    client = botocore.session.get_session().create_client("secretsmanager")
    cache = SecretCache(SecretCacheConfig(secret_refresh_interval=a.refresh), client=client)
    stats = {"mode": a.mode, "connections": 0, "queries": 0, "failed": 0, "users": {}, "errors": []}

    def note_error(e):
        stats["failed"] += 1
        if len(stats["errors"]) < 10:
            stats["errors"].append(str(e)[:300])

    def credentials():
        s = json.loads(cache.get_secret_string(a.secret_id))
        return s

    def connect(s):
        stats["connections"] += 1
        stats["users"][s["username"]] = stats["users"].get(s["username"], 0) + 1
        return pg8000.native.Connection(
            user=s["username"],
            password=s["password"],
            host=s["host"] if "host" in s else s["database_host"],
            port=int(s.get("port", s.get("database_port", 5432))),
            database=s.get("dbname", s.get("database_name")),
            application_name=a.app,
            timeout=10,
        )

    if a.mode == "connect":
        while not stop.is_set():
            try:
                conn = connect(credentials())
                try:
                    conn.run("SELECT 1")
                    stats["queries"] += 1
                finally:
                    conn.close()
            except Exception as e:  # a refused login is what this client counts
                note_error(e)
            time.sleep(0.02)
    else:
        conn = None
        try:
            conn = connect(credentials())
        except Exception as e:
            note_error(e)
        while conn is not None and not stop.is_set():
            try:
                conn.run("SELECT 1")
                stats["queries"] += 1
            except Exception as e:
                note_error(e)
            stop.wait(0.2)
        if conn is not None:
            conn.close()

    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
