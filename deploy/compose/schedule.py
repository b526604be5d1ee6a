"""Stands in for an EventBridge Scheduler schedule (moto's never fire): sends the worker's message
for demo/app every INTERVAL seconds."""
import json
import os
import time

import boto3

sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
url = os.environ["ROTATOR_QUEUE_URL"]
interval = int(os.environ.get("INTERVAL", "30"))
while True:
    body = json.dumps({"secret_id": "demo/app", "force": False, "reason": "compose demo schedule"})
    sqs.send_message(QueueUrl=url, MessageBody=body)
    print("enqueued a rotation of demo/app", flush=True)
    time.sleep(interval)
