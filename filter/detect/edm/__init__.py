"""Exact Data Match: an organisation's own records, found in mail by salted hashes only.

`build` turns a CSV file into an index file (`edm/NAME.edm` in the rule pack): per column, the
keyed hashes of the normalised values with their row numbers, sorted; no plaintext. `index`
reads and checks such a file and maps it read-only; `words` holds what both sides share (how a
value or a text becomes words, and how words become hashes); `match` finds the rows whose
values stand close together in a text.

May import `message` (texts are read as `as_read` reads them) and `detect.patterns`; nothing of
policy, scanning or the doors.
"""
