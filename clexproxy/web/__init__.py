"""The web console: the pages the gateway serves beside its API, for the people who use it.

Server-rendered HTML (Jinja2 through aiohttp-jinja2) with small hand-written CSS and JS shipped
inside the package: no build step, no CDN, no external fonts, so it works offline and behind a
firewall. `[console] enabled = false` leaves every page out (SPEC's JSON 404, as any unknown
path); the proxied paths never pass through anything here.
"""
