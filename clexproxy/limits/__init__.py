"""Admission: the per-minute and daily limits a proxied call must pass, and settling what it spent.

`Limits` (in `limits.base`) is the one API the handlers and the gateway call; `LocalLimits`
serves a gateway alone, `SharedLimits` one of several workers sharing budgets through Redis.
`limits.headers` renders what they tell a client; `RecentRefusals` remembers what they refused
a moment ago, for the screen.
"""
