"""What the stand-ins in this directory share: serving a handler over TLS on a loopback port
that is written to a file once listening."""

import http.server
import os
import ssl


def serve_tls(handler, cert, key, port_file):
    """Serves `handler` with the certificate and key files on 127.0.0.1:0; writes the port to
    `port_file` (atomically) once listening; never returns."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()
