"""Cross-process and cross-host agreement (Redis): see redis.py."""
