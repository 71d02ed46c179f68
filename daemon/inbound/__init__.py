"""Ways a message reaches eleads: the SMTP server, the IMAP poller, and CLI ingest."""
