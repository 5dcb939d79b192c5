"""SMTP smuggling and DATA framing, over raw sockets (smtplib would fix the line ends for us)."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.timeout(60)

SMUGGLED = (
    b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nPay now.\r\n"
)


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """One whole reply (continuation lines joined)."""
        lines = []
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def transaction(self, content: bytes) -> bytes:
        assert self.command(b"MAIL FROM:<alice@example.com>").startswith(b"250")
        assert self.command(b"RCPT TO:<bob@example.org>").startswith(b"250")
        assert self.command(b"DATA").startswith(b"354")
        self.sock.sendall(content)
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(name="raw_client")
def raw_client_fixture(make_relay, sink):
    relay = make_relay(
        {"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none", "timeout": 5}}
    )
    client = RawClient(relay.port)
    assert client.reply().startswith(b"220")
    assert client.command(b"EHLO client.example.test").startswith(b"250")
    yield client
    client.close()


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"],
    ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF", "CR.CRLF", "CRLF.CR"],
)
def test_bare_line_ends_never_end_data(raw_client, sink, fake_end):
    head = b"From: alice@example.com\r\nSubject: innocent\r\n\r\nHello."
    reply = raw_client.transaction(head + fake_end + SMUGGLED + b".\r\n")
    # No reply yet to anything smuggled: the first reply is the one for the whole message.
    assert reply.startswith(b"250 ")
    assert raw_client.command(b"NOOP").startswith(b"250")
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ("bob@example.org",)
    assert b"Pay now." in got.content  # the would-be second message is text in the first
    # Passed on with CRLF only, so no next hop can find an end of DATA in it either.
    assert got.content.count(b"\n") == got.content.count(b"\r\n") == got.content.count(b"\r")
    assert len(sink.received) == 1


def test_pipelined_bytes_after_the_final_dot_are_commands(raw_client, sink):
    raw_client.sock.sendall(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\n")
    assert raw_client.reply().startswith(b"250")
    assert raw_client.reply().startswith(b"250")
    assert raw_client.command(b"DATA").startswith(b"354")
    raw_client.sock.sendall(b"Subject: one\r\n\r\nbody\r\n.\r\nRSET\r\nQUIT\r\n")
    assert raw_client.reply().startswith(b"250 ")  # the message
    assert raw_client.reply().startswith(b"250")  # RSET
    assert raw_client.reply().startswith(b"221")  # QUIT
    assert len(sink.wait_for(1)) == 1


def test_message_sent_in_small_pieces_is_reassembled(raw_client, sink):
    assert raw_client.command(b"MAIL FROM:<alice@example.com>").startswith(b"250")
    assert raw_client.command(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert raw_client.command(b"DATA").startswith(b"354")
    content = b"Subject: pieces\r\n\r\n" + b"line\r\n" * 50 + b"..dot\r\n.\r\n"
    for start in range(0, len(content), 7):  # the terminator is split across writes
        raw_client.sock.sendall(content[start : start + 7])
    assert raw_client.reply().startswith(b"250 ")
    [got] = sink.wait_for(1)
    assert got.content.endswith(b"line\r\n.dot\r\n")


def test_an_empty_message_is_relayed_with_only_the_received_header(raw_client, sink):
    """Zero bytes of data is a message like any other (RFC 5321 puts no lower bound on it;
    Postfix takes it too): judged, passed on with the relay's trace header and nothing else,
    and the session goes on."""
    reply = raw_client.transaction(b".\r\n")
    assert reply.startswith(b"250 2.0.0 sink: queued as S1"), reply
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ("bob@example.org",)
    assert got.content.startswith(b"Received: from client.example.test ([127.0.0.1])\r\n")
    assert got.content.count(b"\r\n") == 2  # the two lines of Received:, no body, no blank line
    assert raw_client.command(b"NOOP").startswith(b"250")
