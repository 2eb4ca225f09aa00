"""A stand-in AWS endpoint (S3 and Bedrock runtime) that checks every request's Signature
Version 4 the way AWS does, recomputing it with botocore's signer (an implementation independent
of airlock's) from the request as received.

Usage: aws_standin.py CERT KEY PORT_FILE LOG_FILE. The expected keys come from the environment:
STANDIN_KEY_ID, STANDIN_SECRET and, when set, STANDIN_TOKEN. Each request appends one JSON line
to LOG_FILE: {"method", "path", "verified", "reason", "payload"}.

S3: PUT /BUCKET/KEY stores the body (aws-chunked bodies decoded), GET returns it. Bedrock:
POST /model/ID/invoke answers JSON; POST /model/ID/invoke-with-response-stream answers an
event stream of three chunks, the first at once and the others a second later.
"""

import base64
import datetime
import hashlib
import http.server
import json
import os
import re
import struct
import sys
import threading
import time
import zlib

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import standin

CERT, KEY, PORT_FILE, LOG_FILE = sys.argv[1:5]
KEY_ID = os.environ["STANDIN_KEY_ID"]
SECRET = os.environ["STANDIN_SECRET"]
TOKEN = os.environ.get("STANDIN_TOKEN") or None
UNSIGNED = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)
OBJECTS = {}
LOCK = threading.Lock()


def verify(method, raw_path, headers, body):
    """None when the request carries a valid signature for the expected keys, else why not."""
    auth = headers.get("authorization", "")
    m = AUTH_RE.match(auth)
    if not m:
        return "no SigV4 Authorization header"
    key_id, date, region, service, signed, signature = m.groups()
    if key_id != KEY_ID:
        return "unknown access key id"
    names = signed.split(";")
    present = {n for n in headers if n.startswith("x-amz-")}
    if not present <= set(names):
        return "x-amz headers not signed: %s" % sorted(present - set(names))
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed"
    if TOKEN and headers.get("x-amz-security-token") != TOKEN:
        return "wrong or missing session token"
    stamp = headers.get("x-amz-date", "")
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 900:
        return "x-amz-date is not within 15 minutes"
    declared = headers.get("x-amz-content-sha256")
    if service == "s3" and declared is None:
        return "S3 needs x-amz-content-sha256"
    if declared is not None and declared not in UNSIGNED:
        if declared != hashlib.sha256(body).hexdigest():
            return "x-amz-content-sha256 does not match the body"
    if declared in UNSIGNED and service != "s3":
        return "%s accepts only signed payloads" % service
    signer_class = S3SigV4Auth if service == "s3" else SigV4Auth
    signer = signer_class(Credentials(KEY_ID, SECRET, TOKEN), service, region)
    request = AWSRequest(method=method, url="https://%s%s" % (headers["host"], raw_path),
                         headers={n: headers[n] for n in names}, data=body)
    request.context["timestamp"] = stamp
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if expected != signature:
        return "signature mismatch"
    return None


def read_chunked(rfile):
    out = b""
    while True:
        size = int(rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return out
        out += rfile.read(size)
        rfile.readline()


def decode_aws_chunked(body):
    """The payload of an aws-chunked body (chunks, then trailers)."""
    out, rest = b"", body
    while True:
        line, rest = rest.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out
        out, rest = out + rest[:size], rest[size + 2:]


def event(payload):
    """One AWS event-stream message carrying a Bedrock response-stream chunk."""
    headers = b""
    for name, value in ((":event-type", "chunk"), (":content-type", "application/json"),
                        (":message-type", "event")):
        n, v = name.encode(), value.encode()
        headers += bytes([len(n)]) + n + bytes([7]) + struct.pack(">H", len(v)) + v
    body = json.dumps({"bytes": base64.b64encode(payload).decode()}).encode()
    prelude = struct.pack(">II", 12 + len(headers) + len(body) + 4, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_one(self):
        headers = {k.lower(): v for k, v in self.headers.items()}
        if "chunked" in headers.get("transfer-encoding", ""):
            body = read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(headers.get("content-length", "0")))
        reason = verify(self.command, self.path, headers, body)
        with LOCK, open(LOG_FILE, "a") as log:
            log.write(json.dumps({"method": self.command, "path": self.path,
                                  "verified": reason is None, "reason": reason,
                                  "payload": headers.get("x-amz-content-sha256")}) + "\n")
        if reason is not None:
            xml = "<Error><Code>SignatureDoesNotMatch</Code><Message>%s</Message></Error>" % reason
            return self.reply(403, xml.encode(), "application/xml",
                              {"x-amzn-ErrorType": "InvalidSignatureException"})
        if "aws-chunked" in headers.get("content-encoding", ""):
            body = decode_aws_chunked(body)
        path = self.path.split("?")[0]
        if path.startswith("/model/") and path.endswith("/invoke-with-response-stream"):
            return self.stream()
        if path.startswith("/model/") and path.endswith("/invoke"):
            reply = {"content": [{"type": "text", "text": "signed ok"}], "bytes": len(body)}
            return self.reply(200, json.dumps(reply).encode(), "application/json")
        if self.command == "PUT":
            with LOCK:
                OBJECTS[path] = body
            return self.reply(200, b"", "application/xml", {"ETag": '"%s"' % hashlib.md5(body).hexdigest()})
        if self.command == "GET" and path in OBJECTS:
            return self.reply(200, OBJECTS[path], "application/octet-stream")
        return self.reply(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

    def reply(self, status, body, content_type, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, text in enumerate(["one", "two", "three"]):
            if i == 1:
                time.sleep(1.0)
            delta = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}}
            frame = event(json.dumps(delta).encode())
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


standin.serve_tls(Handler, CERT, KEY, PORT_FILE)
