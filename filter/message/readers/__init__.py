"""What is inside attachments: type detection and dispatch, archives, Office, Outlook, PDF.

Readers turn one attachment into facts and the members inside it; they never import the MIME
walk (`message.mime`), which calls them. May import `message` only.
"""
