"""Helpers for the tests and the benches, one module per concern: message and attachment
builders (samples, outlook_msg, pdfs, cfb), rule packs (packs), card-number references
(cards), waiting (waiting), loopback ports (net), child processes (processes), the `mailgate`
command (cli), SMTP client and sink (smtp_client, smtp_sink, background_loop), the relay
harness (relay_harness, relay_fixtures), certificates (certs), /metrics (scrape) and a private
Postfix (postfix)."""
