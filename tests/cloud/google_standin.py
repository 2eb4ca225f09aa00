"""A stand-in Google token endpoint and API over TLS, for service-account credentials.

POST /token on oauth2.googleapis.com takes RFC 7523's JWT grant and verifies the assertion with
Google's own library (google-auth's jwt.decode) against the service account's certificate:
signature, key id, audience, issuer, scope and lifetime. A good grant mints an access token valid
for STANDIN_TTL seconds. Every other host is the API: it answers 200 to a live minted token and
401 otherwise.

Usage: google_standin.py CERT KEY PORT_FILE LOG_FILE, with STANDIN_SA_CERT (the account's
certificate PEM file), STANDIN_KID, STANDIN_CLIENT_EMAIL and STANDIN_TTL in the environment. Each
grant and API call appends a JSON line to LOG_FILE.
"""

import http.server
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse

import google.auth.jwt

import standin

CERT, KEY, PORT_FILE, LOG_FILE = sys.argv[1:5]
SA_CERT = open(os.environ["STANDIN_SA_CERT"]).read()
KID = os.environ["STANDIN_KID"]
CLIENT_EMAIL = os.environ["STANDIN_CLIENT_EMAIL"]
TTL = int(os.environ["STANDIN_TTL"])
TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TOKENS = {}
LOCK = threading.Lock()


def log(entry):
    with LOCK, open(LOG_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def check_grant(form):
    """The JWT's claims when the grant is good, else the reason it is not."""
    if form.get("grant_type") != [JWT_GRANT] or len(form.get("assertion", [])) != 1:
        return None, "not a JWT bearer grant"
    try:
        claims = google.auth.jwt.decode(form["assertion"][0], certs={KID: SA_CERT},
                                        audience=TOKEN_URI)
    except Exception as e:  # google-auth raises ValueError and its own errors
        return None, "Invalid JWT: %s" % e
    if claims.get("iss") != CLIENT_EMAIL:
        return None, "wrong issuer"
    if claims.get("scope") != SCOPE:
        return None, "wrong scope"
    if not 0 < claims["exp"] - claims["iat"] <= 3600:
        return None, "lifetime over an hour"
    return claims, None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_one(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        host = self.headers.get("host", "")
        if host == "oauth2.googleapis.com" and self.path == "/token":
            form = urllib.parse.parse_qs(body.decode())
            claims, reason = check_grant(form)
            log({"kind": "grant", "ok": reason is None, "reason": reason})
            if reason is not None:
                return self.reply(400, {"error": "invalid_grant", "error_description": reason})
            token = "ya29.standin-" + secrets.token_hex(16)
            with LOCK:
                TOKENS[token] = time.time() + TTL
            return self.reply(200, {"access_token": token, "expires_in": TTL,
                                    "token_type": "Bearer"})
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        with LOCK:
            live = TOKENS.get(token, 0) > time.time()
        log({"kind": "api", "ok": live, "path": self.path})
        if not live:
            return self.reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
        return self.reply(200, {"predictions": [{"content": "minted ok"}]})

    do_GET = do_POST = handle_one

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


standin.serve_tls(Handler, CERT, KEY, PORT_FILE)
