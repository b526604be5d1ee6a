"""Seeds moto for the compose demo: two RDS Proxy user secrets and the application secret in the
seed tool's format. Idempotent: existing secrets are left alone."""
import json
import os

import boto3

sm = boto3.client("secretsmanager", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def ensure(name, value):
    try:
        return sm.describe_secret(SecretId=name)["ARN"]
    except sm.exceptions.ResourceNotFoundException:
        return sm.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]


app = ensure("demo/proxy/app", {"username": "app", "password": "demo-app-initial"})
clone = ensure("demo/proxy/app_clone", {"username": "app_clone", "password": "demo-clone-initial"})
ensure(
    "demo/app",
    {
        "rotation_type": "AWS RDS",
        "rotation_usernames": ["app", "app_clone"],
        "proxy_secret_ids": [app, clone],
        "database_host": "standin",
        "database_port": "6432",
        "database_name": "shop",
        "direct_host": "postgres",
        "direct_port": 5432,
        "username": "app",
        "password": "demo-app-initial",
        "owner_team": "demo",
    },
)
print("seeded demo/app, demo/proxy/app, demo/proxy/app_clone")
