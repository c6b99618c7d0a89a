"""First run of the demo: simulator keys and starting credits for the admin, once.

With the simulator on, a new install can make its first generation without any outside
account: the first admin gets one key per gateway pointing at this site's /simulator/ and a
starting grant, written to the ledger like any grant. Running it again changes nothing.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts import ledger
from accounts.models import ProviderKey
from generations import providers

STARTING_CREDITS = 1000


class Command(BaseCommand):
    help = "With the simulator on: give the first admin simulator keys and starting credits."

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
        admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        if admin is None:
            raise CommandError("There is no admin yet; run ensure_admin first.")
        added = 0
        for provider_id, adapter in providers.REGISTRY.items():
            label = f"Simulator ({adapter.name})"
            if ProviderKey.objects.filter(owner=admin, label=label).exists():
                continue
            key = ProviderKey(
                provider=provider_id,
                label=label,
                owner=admin,
                base_url=f"{site.rstrip('/')}/simulator/{provider_id}",
            )
            key.set_secret(f"sim-{provider_id}-{secrets.token_hex(8)}")
            key.save()
            added += 1
        ledger.grant(
            admin,
            STARTING_CREDITS,
            by=admin,
            reason="Starting credits for the simulated demo",
            idempotency_key=f"demo-start:{admin.pk}",
        )
        self.stdout.write(
            f"Demo ready for {admin.username}: {added} simulator key(s) added, "
            f"{STARTING_CREDITS} starting credits granted once."
        )
