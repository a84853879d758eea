"""Demo provisioning: the demo account, its key and its console owner, made on first start and kept across restarts.

The key is written to the data dir (readable only by its owner) so the curl line the banner
prints keeps working after a restart; the store keeps only its hash, so a key file that no
longer matches an active key is replaced by a new key.

The owner (`[demo] owner_email`) is made once; while their password is unset, every start makes
a fresh one-time link for the banner (the previous one stops working), and after that the banner
only says where to sign in. The link goes to stdout alone, never to a log.
"""

from __future__ import annotations

import time

from clexproxy.config import Settings
from clexproxy.fastpath.keys import hash_key, key_format_ok
from clexproxy.store import open_store
from clexproxy.store.base import KeyLimitReached, UserExists
from clexproxy.store.datadir import usable_data_dir

DEMO_KEY_FILE = "demo_key"


async def ensure_demo_key(settings: Settings) -> str:
    """The demo account's key, created on first start and kept (demo mode only) so the curl line keeps working."""
    path = usable_data_dir(settings.server.data_dir) / DEMO_KEY_FILE
    store = await open_store(settings.server.data_dir, settings.database.url)
    try:
        if path.exists():
            key = path.read_text().strip()
            digest = hash_key(key) if key_format_ok(key) else b""
            if any(k.key_hash == digest and k.active for k in await store.list_keys(settings.demo.account)):
                return key
        if await store.get_account(settings.demo.account) is None:
            await store.create_account(settings.demo.account, settings.demo.plan)
        limits = {p.name: p.max_keys for p in settings.catalog.plans.values()}
        try:
            _, key = await store.create_key(settings.demo.account, settings.demo.plan, limits)
        except KeyLimitReached:
            # The demo account is at its key limit with keys we cannot show: retire the oldest.
            oldest = (await store.list_keys(settings.demo.account, include_revoked=False))[0]
            await store.revoke_key(oldest.id)
            _, key = await store.create_key(settings.demo.account, settings.demo.plan, limits)
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key
    finally:
        await store.close()


async def ensure_demo_owner(settings: Settings) -> str:
    """The banner's console line: a one-time set-password link for the demo owner, or where to sign in."""
    from clexproxy.web.session import issue_link, public_url

    email = settings.demo.owner_email
    base = public_url(settings)
    store = await open_store(settings.server.data_dir, settings.database.url)
    try:
        if await store.get_account(settings.demo.account) is None:
            await store.create_account(settings.demo.account, settings.demo.plan)
        found = await store.user_by_email(email)
        if found is None:
            try:
                user = await store.create_user(email, "owner", settings.demo.account)
            except UserExists:  # another process made them just now
                again = await store.user_by_email(email)
                assert again is not None
                user = again[0]
        else:
            user = found[0]
        if user.password_set:
            return f"Console: sign in as {user.email} at {base}/console"
        link, _ = await issue_link(store, user.id, base, settings.console.link_hours, time.time())
        return f"Console: set {user.email}'s password (one use): {link}"
    finally:
        await store.close()
