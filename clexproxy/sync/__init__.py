"""Keeping each process in step: with the other processes through Redis (`RedisSync`), with the store (`StoreSync`)."""
