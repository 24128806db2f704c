"""Announcement mail from the real binary to an `aiosmtpd` sink on loopback: each announcement reaches the
configured list, the members added through the API and every registered principal's contact once, and a restart
sends nothing again; each mail carries a signed one-click unsubscribe link (RFC 8058) that removes its recipient,
and a forged link is refused."""

from __future__ import annotations

import email
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esgf_server import EsgfServer, new_operator_token, wait_until  # noqa: E402


class Sink:
    """Keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"

    def recipients(self) -> list[str]:
        with self.lock:
            return sorted(r for rcpts, _ in self.messages for r in rcpts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_announcement_is_mailed_once_per_recipient_even_across_a_restart(tmp_path):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    server = EsgfServer(tmp_path / "data", new_operator_token(), env={
        "ESGF_EVENTS_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "ESGF_EVENTS_ANNOUNCE_TO": "list@example.org, centre@example.org",
        "ESGF_EVENTS_OPS_MAIL_FROM": "events@example.org",
    }).start()
    try:
        with server.client() as c:
            r = c.post("/v1/consumers", json={"name": "indexer", "contact": "indexer@example.org"})
            assert r.status_code == 201, r.text
            r = c.post("/v1/announcements", json={"kind": "api-change", "title": "New filter syntax",
                                                   "body": "Filters now accept key prefixes."})
            assert r.status_code == 201, r.text
        expected = ["centre@example.org", "indexer@example.org", "list@example.org"]
        wait_until(lambda: sink.recipients() == expected, what="one mail per recipient")
        for _, message in sink.messages:
            assert message["Subject"] == "[ESGF Event Service] api-change: New filter syntax"
            assert "Filters now accept key prefixes." in message.get_payload(decode=True).decode()
        with server.client() as c:
            deliveries = c.get("/v1/announcements/deliveries").json()["deliveries"]
        assert sorted(d["recipient"] for d in deliveries if d["status"] == "sent") == expected

        server.restart()
        with server.client() as c:
            r = c.post("/v1/announcements", json={"kind": "general", "title": "Second"})
            assert r.status_code == 201, r.text
        wait_until(lambda: len(sink.recipients()) == 6, what="the second announcement's mail")
        assert sink.recipients() == sorted(expected * 2), "the first announcement was not sent again"
    finally:
        server.stop()
        controller.stop()


PUBLIC_URL = "https://events.example.org"


def mail_server(tmp_path, port: int, announce_to: str) -> EsgfServer:
    return EsgfServer(tmp_path / "data", new_operator_token(), env={
        "ESGF_EVENTS_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "ESGF_EVENTS_ANNOUNCE_TO": announce_to,
        "ESGF_EVENTS_OPS_MAIL_FROM": "events@example.org",
        # The links in mail point at the public URL; the test replays their path and query on the server.
        "ESGF_EVENTS_OPS_PUBLIC_URL": PUBLIC_URL,
    }).start()


def one_line(value: str) -> str:
    """A header value with any folding undone."""
    return "".join(value.split())


def link_of(message) -> str:
    """The message's List-Unsubscribe URL, as path and query below the public URL."""
    value = one_line(str(message["List-Unsubscribe"]))
    assert value.startswith("<") and value.endswith(">"), value
    url = value[1:-1]
    assert url.startswith(PUBLIC_URL + "/v1/announcements/unsubscribe?"), url
    return url[len(PUBLIC_URL):]


def delivered(server: EsgfServer, announcement: str) -> dict[str, str]:
    with server.client() as c:
        deliveries = c.get("/v1/announcements/deliveries").json()["deliveries"]
    return {d["recipient"]: d["status"] for d in deliveries if d["announcement"] == announcement}


def test_members_get_mail_with_a_one_click_link_that_unsubscribes_them_and_forged_links_are_refused(tmp_path):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    server = mail_server(tmp_path, port, "list@example.org")
    try:
        with server.client() as c:
            r = c.post("/v1/announcements/recipients", json={"address": "centre@example.org", "name": "Centre A"})
            assert r.status_code == 201, r.text
            r = c.post("/v1/announcements/recipients", json={"address": "Centre@Example.org"})
            assert r.status_code == 200, "adding a member again is idempotent: " + r.text
            r = c.post("/v1/announcements/recipients", json={"address": "not an address"})
            assert r.status_code == 400
            assert r.headers["content-type"] == "application/problem+json"
            listed = c.get("/v1/announcements/recipients").json()["recipients"]
            assert [(e["address"], e["sources"], e["unsubscribed"]) for e in listed] == [
                ("list@example.org", ["configured"], False),
                ("centre@example.org", ["member"], False),
            ]
            r = c.post("/v1/announcements", json={"kind": "general", "title": "First"})
            assert r.status_code == 201, r.text
        wait_until(lambda: sink.recipients() == ["centre@example.org", "list@example.org"],
                   what="the first announcement's mail, to the member too")

        links = {}
        for rcpts, message in sink.messages:
            assert one_line(str(message["List-Unsubscribe-Post"])) == "List-Unsubscribe=One-Click"
            link = link_of(message)
            assert link in one_line(message.get_payload(decode=True).decode()), "the body carries the link"
            links[rcpts[0]] = link
        assert links["centre@example.org"] != links["list@example.org"]

        # Anonymous, like a mail provider or a browser: no token.
        with httpx.Client(base_url=server.url, timeout=30.0) as anonymous:
            # A forged signature (another address's, or a changed one) is refused, whatever the method.
            address, _, sig = links["list@example.org"].partition("&sig=")
            forged = [
                links["list@example.org"].replace("list%40example.org", "centre%40example.org"),
                address + "&sig=" + ("A" if sig[0] != "A" else "B") + sig[1:],
            ]
            for url in forged:
                for method, form in (("GET", None), ("POST", {"List-Unsubscribe": "One-Click"})):
                    r = anonymous.request(method, url, data=form)
                    assert r.status_code == 403, (method, url, r.text)
                    assert r.headers["content-type"] == "application/problem+json"
                    assert r.json()["type"] == "urn:esgf-events:problem:unsubscribe-signature-invalid"

            # A GET (a link scanner, a mail client's preview) only shows the button.
            r = anonymous.get(links["centre@example.org"])
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/html")
            assert '<form method="post"' in r.text
            with server.client() as c:
                listed = c.get("/v1/announcements/recipients").json()["recipients"]
            assert not any(e["unsubscribed"] for e in listed), "a GET unsubscribed someone"

            # The one-click POST of RFC 8058.
            r = anonymous.post(links["centre@example.org"], data={"List-Unsubscribe": "One-Click"})
            assert r.status_code == 200, r.text
            assert r.json() == {"unsubscribed": "centre@example.org"}

        with server.client() as c:
            listed = c.get("/v1/announcements/recipients").json()["recipients"]
            assert [(e["address"], e["unsubscribed"]) for e in listed] == [("list@example.org", False)]
            r = c.post("/v1/announcements", json={"kind": "general", "title": "Second"})
            assert r.status_code == 201, r.text
        wait_until(lambda: delivered(server, "2") == {"list@example.org": "sent"},
                   what="the second announcement's mail")
        assert sink.recipients() == ["centre@example.org", "list@example.org", "list@example.org"], \
            "the unsubscribed member got no more mail"
    finally:
        server.stop()
        controller.stop()


def test_an_unsubscribed_configured_address_stays_suppressed_across_a_restart(tmp_path):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    server = mail_server(tmp_path, port, "list@example.org, desk@example.org")
    try:
        with server.client() as c:
            assert c.post("/v1/announcements", json={"kind": "general", "title": "First"}).status_code == 201
        wait_until(lambda: len(sink.recipients()) == 2, what="the first mail")
        link = next(link_of(m) for rcpts, m in sink.messages if rcpts == ["desk@example.org"])
        with httpx.Client(base_url=server.url, timeout=30.0) as anonymous:
            r = anonymous.post(link, data={"List-Unsubscribe": "One-Click"})
            assert r.status_code == 200, r.text

        server.restart()
        with server.client() as c:
            listed = c.get("/v1/announcements/recipients").json()["recipients"]
            assert [(e["address"], e["sources"], e["unsubscribed"]) for e in listed] == [
                ("list@example.org", ["configured"], False),
                ("desk@example.org", ["configured"], True),
            ]
            assert c.post("/v1/announcements", json={"kind": "general", "title": "Second"}).status_code == 201
        wait_until(lambda: delivered(server, "2") == {"list@example.org": "sent"}, what="the second mail")
        assert sink.recipients() == ["desk@example.org", "list@example.org", "list@example.org"]
    finally:
        server.stop()
        controller.stop()


@pytest.mark.parametrize("mode", ["starttls", "implicit-tls"])
def test_mail_goes_over_tls_with_authentication_to_a_server_the_configured_roots_vouch_for(tmp_path, mode):
    """`smtp://...?tls=required` (STARTTLS) and `smtps://user:pass@...` (TLS from the first byte), each with
    SMTP AUTH, against a certificate of a test CA the server trusts through `SSL_CERT_FILE` (its platform verifier
    reads the roots from there); the password is never logged."""
    # webpki refuses a CA certificate as the server's own: a throwaway CA signs the server's certificate.
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert, key, csr, ext = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "cert.csr", tmp_path / "ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
         "-subj", "/CN=esgf-events test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
         str(cert), "-days", "1", "-extfile", str(ext)],
    ):
        subprocess.run(["openssl", *command], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    password = "s3cret-" + new_operator_token()[-12:]
    logins: list[str] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == password
        if ok:
            logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    sink = Sink()
    port = free_port()
    if mode == "starttls":
        controller = Controller(sink, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                                authenticator=authenticator, auth_require_tls=True)
        url = f"smtp://events:{password}@127.0.0.1:{port}?tls=required"
    else:
        controller = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=context,
                                authenticator=authenticator, auth_require_tls=False)
        url = f"smtps://events:{password}@127.0.0.1:{port}"
    controller.start()
    server = EsgfServer(tmp_path / "data", new_operator_token(), env={
        "ESGF_EVENTS_SMTP_URL": url,
        "ESGF_EVENTS_ANNOUNCE_TO": "list@example.org",
        "ESGF_EVENTS_OPS_MAIL_FROM": "events@example.org",
        "SSL_CERT_FILE": str(ca),
    }).start()
    try:
        with server.client() as c:
            r = c.post("/v1/announcements", json={"kind": "general", "title": "Over TLS"})
            assert r.status_code == 201, r.text
        try:
            wait_until(lambda: sink.recipients() == ["list@example.org"], what="the mail over TLS")
        except BaseException:
            print("\n".join(line for line in server.log if "mail" in line))
            raise
        assert sink.messages[0][1]["Subject"] == "[ESGF Event Service] general: Over TLS"
        assert logins and set(logins) == {"events"}
    finally:
        server.stop()
        controller.stop()
    assert password not in "\n".join(server.log), "the SMTP password appears in the server's log"
