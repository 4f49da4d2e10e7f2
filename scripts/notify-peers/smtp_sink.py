"""A real SMTP server for the nodemedic-notify tests (aiosmtpd), writing what it receives to a directory.

Each message becomes <n>.eml (the bytes as received) plus <n>.json with the envelope (mail from, recipients,
the login that authenticated, if any, and whether STARTTLS was used) and the message as Python's email package
reads it (headers, the decoded text/plain and text/html parts), so tests need no MIME decoder of their own. Prints "ready <port>" once it accepts connections.

Usage: python smtp_sink.py --port PORT --dir DIR [--auth USER:PASSWORD]
                           [--starttls-cert CERT --starttls-key KEY | --tls-cert CERT --tls-key KEY]
"""

import argparse
import email
import email.policy
import json
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class SaveToDirectory:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            number = self.count
        stem = os.path.join(self.directory, str(number))
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        text_part = message.get_body(preferencelist=("plain",))
        html_part = message.get_body(preferencelist=("html",))
        meta = {
            "mailFrom": envelope.mail_from,
            "rcptTos": envelope.rcpt_tos,
            "login": login,
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "subject": str(message["Subject"]),
            "from": str(message["From"]),
            "to": str(message["To"]),
            "contentType": message.get_content_type(),
            "incidentKey": str(message["X-Nodemedic-Incident"]),
            "text": text_part.get_content() if text_part is not None else None,
            "html": html_part.get_content() if html_part is not None else None,
        }
        # Write under a temporary name, then rename, so a reader never sees half a message.
        with open(stem + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(stem + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(stem + ".eml.tmp", stem + ".eml")
        os.rename(stem + ".json.tmp", stem + ".json")
        return "250 Message accepted for delivery"


def password_checker(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    return authenticate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--auth", help="USER:PASSWORD; AUTH is then required")
    parser.add_argument("--starttls-cert")
    parser.add_argument("--starttls-key")
    parser.add_argument("--tls-cert", help="TLS from the first byte (SMTPS) with this certificate")
    parser.add_argument("--tls-key")
    args = parser.parse_args()

    options = {}
    if args.auth:
        user, _, password = args.auth.partition(":")
        options.update(authenticator=password_checker(user, password), auth_required=True, auth_require_tls=False)
    if args.starttls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.starttls_cert, args.starttls_key)
        options.update(tls_context=context, require_starttls=True)
        if args.auth:
            options["auth_require_tls"] = True

    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        # The whole connection is encrypted; aiosmtpd's own TLS check only knows about STARTTLS.
        options.update(ssl_context=context, auth_require_tls=False)

    controller = Controller(SaveToDirectory(args.dir), hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    print(f"ready {args.port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Also stop when the test that started us goes away (its end of stdin closes).
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
