"""An agent using the real AWS SDK for Python (boto3) with dummy keys, run through `airlock run`
by tests/it/cloud.rs: S3 put/get (one body under airlock's signing buffer, one over it), a
Bedrock JSON invoke, a Bedrock event-stream response read as it arrives, and a request an
unsigned client sends. Prints its environment last."""

import json
import os
import time

import boto3
import botocore
from botocore.config import Config

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16,
                     "messages": [{"role": "user", "content": "hi"}]})

s3 = boto3.client("s3", region_name="us-west-2", config=Config(s3={"addressing_style": "path"}))
s3.put_object(Bucket="agent-bucket", Key="small.txt", Body=b"hello through airlock")
got = s3.get_object(Bucket="agent-bucket", Key="small.txt")["Body"].read()
assert got == b"hello through airlock", got
big = os.urandom(9 * 1024 * 1024)
s3.put_object(Bucket="agent-bucket", Key="big.bin", Body=big)
assert s3.get_object(Bucket="agent-bucket", Key="big.bin")["Body"].read() == big
print("s3 ok")

bedrock = boto3.client("bedrock-runtime", region_name="us-east-1")
reply = json.loads(bedrock.invoke_model(modelId=MODEL, body=PROMPT)["body"].read())
assert reply["content"][0]["text"] == "signed ok", reply
print("bedrock invoke ok")

start = time.monotonic()
stream = bedrock.invoke_model_with_response_stream(modelId=MODEL, body=PROMPT)["body"]
texts, times = [], []
for ev in stream:
    times.append(time.monotonic() - start)
    texts.append(json.loads(ev["chunk"]["bytes"])["delta"]["text"])
assert texts == ["one", "two", "three"], texts
# The stand-in sends the first event at once and the others a second later: the first must
# reach the SDK before the others were even sent.
assert times[0] < 0.8 and times[-1] >= 1.0, times
print("bedrock stream ok: first event after %.2fs, last after %.2fs" % (times[0], times[-1]))

unsigned = boto3.client("bedrock-runtime", region_name="us-east-1",
                        config=Config(signature_version=botocore.UNSIGNED))
reply = json.loads(unsigned.invoke_model(modelId=MODEL, body=PROMPT)["body"].read())
assert reply["content"][0]["text"] == "signed ok", reply
print("unsigned client ok")

print("environment:", json.dumps(dict(os.environ)))
