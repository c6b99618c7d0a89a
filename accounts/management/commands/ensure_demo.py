"""The demo: simulator keys every member may use, and starting credits for the first admin.

With the simulator on, a new install can make its first generation without any outside
account: one team key per gateway points at this site's /simulator/ and is shared with every
member (members added later get them when they are created, see accounts.models), and the first
admin gets a starting grant, written to the ledger like any grant, once. Running it again
changes nothing but what must follow the site: the keys' address and who they are shared with.
Keys the admin owned before the demo's keys became team keys are turned into team keys.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import F, Q

from accounts import ledger
from accounts.models import SIMULATOR_LABEL_PREFIX, LedgerEntry, ProviderKey
from generations import providers

STARTING_CREDITS = 1000


class Command(BaseCommand):
    help = (
        "With the simulator on: share simulator keys with every member and give the first "
        "admin starting credits."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--site", required=True, help="This site's address, e.g. http://127.0.0.1:8000"
        )

    def handle(self, *args, site: str, **options):
        if not settings.SIMULATOR_ENABLED:
            self.stdout.write("The simulator is off; no demo keys or credits were added.")
            return
        if not site.startswith(("http://", "https://")):
            raise CommandError("--site must start with http:// or https://")
        User = get_user_model()
        admin = User.objects.filter(is_superuser=True).order_by("pk").first()
        if admin is None:
            raise CommandError("There is no admin yet; run ensure_admin first.")
        with transaction.atomic():
            added = self.share_keys(site.rstrip("/"), admin, list(User.objects.all()))
        grant_key = f"demo-start:{admin.pk}"
        granted_before = LedgerEntry.objects.filter(idempotency_key=grant_key).exists()
        ledger.grant(
            admin,
            STARTING_CREDITS,
            by=admin,
            reason="Starting credits for the simulated demo",
            idempotency_key=grant_key,
        )
        keys = (
            f"{added} simulator keys added and shared with every member"
            if added
            else "the simulator keys are shared with every member"
        )
        credits = (
            f"{admin.username}'s {STARTING_CREDITS} starting credits were already granted "
            "at the first start"
            if granted_before
            else f"{STARTING_CREDITS} starting credits granted to {admin.username}"
        )
        self.stdout.write(f"Demo ready: {keys}; {credits}.")

    def share_keys(self, site: str, admin, members: list) -> int:
        """Make sure each gateway has its simulator team key, pointing at `site` and shared
        with `members`. Returns how many keys were added."""
        added = 0
        for provider_id, adapter in providers.REGISTRY.items():
            label = f"{SIMULATOR_LABEL_PREFIX}{adapter.name})"
            base_url = f"{site}/simulator/{provider_id}"
            key = (
                ProviderKey.objects.filter(provider=provider_id, label=label)
                .filter(Q(owner__isnull=True) | Q(owner=admin))
                .order_by(F("owner").asc(nulls_first=True), "pk")
                .first()
            )
            if key is None:
                key = ProviderKey(provider=provider_id, label=label, base_url=base_url)
                key.set_secret(f"sim-{provider_id}-{secrets.token_hex(8)}")
                key.save()
                added += 1
            elif key.owner_id is not None or key.base_url != base_url:
                # Earlier demos gave these keys to the admin alone; and a start on another
                # address must not leave them calling the old one.
                key.owner, key.base_url = None, base_url
                key.save(update_fields=["owner", "base_url", "updated_at"])
            key.allowed_users.add(*members)
        return added
