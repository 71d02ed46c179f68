"""eleads: an email-native lead intake daemon.

The package is laid out as the pipeline a message travels through::

    inbound/ (SMTP, IMAP, CLI ingest) -> spool -> parse/ -> match/ -> convert -> notify/

Every stage takes plain data in and gives plain data out; only ``db/`` and the
conversion step write to the database.
"""

__version__ = "0.1.0"
