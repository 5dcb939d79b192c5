"""`mailgate console`: the web console where reviewers work through held mail and watch rules.

A door like the relay and the milter: it imports only the public seam (`mailgate.filter`),
`filter.store` (the `QuarantineStore` it reads and writes) and `filter.ops` (configuration,
the masked view of a message, rule statistics, sender notices, the service runner); a release
goes through the function the CLI hands it (`relay.release.release_message`, and
`relay.release.send_notice` for the notices), so the console has no release logic of its own.
Pages are rendered on the server (Starlette, Jinja2) and need no JavaScript; `service` runs
them under uvicorn on the runner every door shares.
"""
