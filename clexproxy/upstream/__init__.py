"""The call to a provider: `UpstreamPool` (retries and fallback over a model's deployments), the lean
HTTP/1.1 keep-alive connections it sends on (`Origin`, on aiohttp's C response parser), and what a
failed attempt means for the caller (`classify`, `final_error`, `Scrubber`)."""
