"""An HTTPS origin that reads each request the way Python and Node web frameworks do, for the
rule-bypass tests (security review 3, #72-#75): the path as `urllib.parse.urlsplit` (like
Express's URL) gives it, so a fragment is dropped; the method overridden by `_method` in a form
or JSON body or the query (Rack, Laravel, Symfony) or by `X-HTTP-Method-Override`; header names
as WSGI, Rack and PHP see them (`_` and `-` alike); query pairs split at `&` and `;` (older
Rack), keys without their index (`expand[0]` is `expand`).

Usage: framework.py CERT KEY LOG. Prints its port, then serves; each request's reading is
appended to LOG as one JSON line and sent back as the body."""

import http.server
import json
import ssl
import sys
import urllib.parse

CERT, KEY, LOG = sys.argv[1:4]
OVERRIDES = ("X_HTTP_METHOD_OVERRIDE", "X_HTTP_METHOD", "X_METHOD_OVERRIDE")


def pairs(text):
    return urllib.parse.parse_qs(text.replace(";", "&"), keep_blank_values=True)


class Framework(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def read_as_a_framework(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(self.path)
        headers = {k.upper().replace("-", "_"): v for k, v in self.headers.items()}
        query = pairs(parts.query)
        kind = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
        fields = {}
        if kind == "application/x-www-form-urlencoded":
            fields = pairs(body.decode("latin-1"))
        elif kind == "application/json":
            try:
                doc = json.loads(body)
                fields = {k: [v] for k, v in doc.items()} if isinstance(doc, dict) else {}
            except ValueError:
                pass
        method = self.command
        named = (fields.get("_method") or query.get("_method") or [None])[0]
        named = named or next((headers[h] for h in OVERRIDES if h in headers), None)
        if named:
            method = str(named).upper()
        reading = {
            "method": method,
            "path": parts.path,
            "query_keys": sorted({k.split("[")[0] for k in query}),
            "headers": sorted(headers),
        }
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(reading) + "\n")
        out = json.dumps(reading).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = read_as_a_framework

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Framework)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
