"""The parsed message: raw bytes to a `Message` once, and the text views every detector reads.

Holds the MIME walk (`mime`), header decoding (`headers`, `rawheaders`), charsets, the
per-message budget, and the text views of parts (`textview`, `html`, `rtf`); what is inside
attachments is read by `readers`. May import nothing else of mailgate: parsing knows no policy.
"""
