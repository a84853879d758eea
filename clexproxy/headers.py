"""The names of the headers clexproxy writes, each spelled once.

The full path (`ApiError.to_response`, the limits' metering headers), the screen's prebuilt
answers and the relay all write these; a name spelled twice could drift, and a client reading
`X-Clex-Credits-Remaining` must find it in every answer that should carry it.
"""

from __future__ import annotations

from typing import Final

REQUEST_ID: Final = "X-Request-Id"

# The account's daily credits (SPEC "Response headers").
CREDITS_REMAINING: Final = "X-Clex-Credits-Remaining"
CREDITS_LIMIT: Final = "X-Clex-Credits-Limit"
CREDITS_RESET: Final = "X-Clex-Credits-Reset"

# The per-minute limit, in OpenAI's names, so SDKs that read them work unchanged.
RATELIMIT_LIMIT_REQUESTS: Final = "x-ratelimit-limit-requests"
RATELIMIT_REMAINING_REQUESTS: Final = "x-ratelimit-remaining-requests"
RATELIMIT_RESET_REQUESTS: Final = "x-ratelimit-reset-requests"

# When to try again (429, 503): seconds, and milliseconds as OpenAI's SDKs read it.
RETRY_AFTER: Final = "Retry-After"
RETRY_AFTER_MS: Final = "retry-after-ms"

# The model that answered, when the fallback did; and the gateway's own time on a JSON answer.
SERVED_MODEL: Final = "X-Clex-Served-Model"
OVERHEAD_MS: Final = "X-Clex-Overhead-Ms"

# The headers every answer after authentication carries, in the order they are written.
METERING: Final = (
    CREDITS_REMAINING,
    CREDITS_LIMIT,
    CREDITS_RESET,
    RATELIMIT_LIMIT_REQUESTS,
    RATELIMIT_REMAINING_REQUESTS,
    RATELIMIT_RESET_REQUESTS,
)
