"""Re-encrypt every stored provider key with the newest key in OMNIWEB_ENCRYPTION_KEYS.

Rotating the encryption key, for operators:

1. Make a new key: `python3 -c 'from cryptography.fernet import Fernet;
   print(Fernet.generate_key().decode())'`.
2. Put it first in OMNIWEB_ENCRYPTION_KEYS, keeping the old key after it ("new,old"), and restart
   the web server and every worker. From then on new secrets are written with the new key and old
   ones still open with the old key.
3. Run `manage.py rotate_encryption_keys` (add `--dry-run` first to only see the counts). It
   prints "rotated N, already current M, unreadable U". Running it again is harmless and should
   report "rotated 0".
4. Remove the old key from OMNIWEB_ENCRYPTION_KEYS and restart again. Everything still decrypts.

Each row is rewritten with a compare-and-swap on the ciphertext that was read, so a secret its
owner replaced while the command ran is looked at again, never overwritten with the old value.
A row that no configured key opens is marked "needs re-entry" (also conditionally), listed by
label and owner, and makes the command exit non-zero: its owner, or an admin for a team key,
has to enter the secret again. Secrets are never printed.
"""

from django.core.management.base import BaseCommand, CommandError

from accounts import crypto
from accounts.models import ProviderKey

ROTATED = "rotated"
CURRENT = "already current"
UNREADABLE = "unreadable"
GONE = "gone"
BUSY = "busy"

# A row whose secret keeps changing under us is left for the next run rather than chased forever.
ATTEMPTS = 3


class Command(BaseCommand):
    help = (
        "Re-encrypt every provider key secret with the newest key in OMNIWEB_ENCRYPTION_KEYS. "
        "Exits non-zero when some secret cannot be decrypted with any configured key."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count what would be rotated and what is unreadable; change nothing.",
        )

    def handle(self, *args, dry_run: bool = False, **options):
        counts = {ROTATED: 0, CURRENT: 0, UNREADABLE: 0, BUSY: 0}
        for key in ProviderKey.objects.select_related("owner").order_by("pk"):
            outcome = self.rotate_one(key, dry_run=dry_run)
            if outcome == GONE:
                continue
            counts[outcome] += 1
            if outcome == UNREADABLE:
                action = "" if dry_run else "; marked “needs re-entry”"
                self.stdout.write(
                    f"Cannot decrypt {describe(key)}{action}: "
                    f"{'an admin' if key.is_team_key else 'its owner'} must enter it again."
                )
            elif outcome == BUSY:
                self.stdout.write(
                    f"Skipped {describe(key)}: its secret kept changing while rotating."
                )

        summary = (
            f"{'would rotate' if dry_run else ROTATED} {counts[ROTATED]}, "
            f"{CURRENT} {counts[CURRENT]}, {UNREADABLE} {counts[UNREADABLE]}"
        )
        if counts[BUSY]:
            summary += f", skipped {counts[BUSY]}"
        if dry_run:
            summary = f"Dry run, nothing changed: {summary}"
        self.stdout.write(summary)

        if counts[UNREADABLE]:
            unreadable = counts[UNREADABLE]
            which = "1 provider key" if unreadable == 1 else f"{unreadable} provider keys"
            raise CommandError(
                f"{which} cannot be decrypted with the configured OMNIWEB_ENCRYPTION_KEYS. If a "
                "key is missing from the list, add it back and run again; otherwise the secrets "
                "listed above must be entered again."
            )
        if counts[BUSY]:
            raise CommandError("Some secrets changed while rotating; run the command again.")

    def rotate_one(self, key: ProviderKey, *, dry_run: bool) -> str:
        token = key.secret_ciphertext
        for _ in range(ATTEMPTS):
            if crypto.is_current(token):
                return CURRENT
            same_row = ProviderKey.objects.filter(pk=key.pk, secret_ciphertext=token)
            try:
                rotated = crypto.rotate(token)
            except crypto.DecryptionError:
                if dry_run or same_row.update(needs_reentry=True):
                    return UNREADABLE
            else:
                if dry_run or same_row.update(secret_ciphertext=rotated):
                    return ROTATED
            # The owner saved a new secret (or deleted the key) between our read and our write.
            token = (
                ProviderKey.objects.filter(pk=key.pk)
                .values_list("secret_ciphertext", flat=True)
                .first()
            )
            if token is None:
                return GONE
        return BUSY


def describe(key: ProviderKey) -> str:
    whose = "team key" if key.is_team_key else f"owner {key.owner.username}"
    return f"“{key.label}” ({key.provider_name or key.provider}, {whose}, {key.code})"
